// When to try again after a connection is lost. Delays are in ms; `random` is injected
// (Math.random in the page, a fixed sequence in tests).

export const BACKOFF_BASE = 0.5; // s: the first window
export const BACKOFF_CAP = 30;   // s: the widest window
// 2 ** 16 * base is far past any cap; bounding the exponent keeps the number finite.
const MAX_EXPONENT = 16;

/**
 * Reconnect attempt `attempt` (0 first) waits a random time in [0, min(cap, base * 2^attempt)):
 * full jitter, so that the clients of a restarted server do not all come back at once.
 */
export function backoffDelay(attempt, random, base = BACKOFF_BASE, cap = BACKOFF_CAP) {
  const span = Math.min(cap, base * 2 ** Math.min(attempt, MAX_EXPONENT));
  return random() * span * 1000;
}

/** After a close with 1001 the server is restarting: back soon, but not all at once. */
export const restartDelay = (random) => (0.2 + random() * 1.3) * 1000;

/** What a close code asks for: 'park' (stop trying), 'soon' or 'backoff'. */
export function afterClose(code) {
  // 4002: another connection took the session over, and fighting it would go on forever.
  // 4003: no retry makes a refused token valid.
  if (code === 4002 || code === 4003) return 'park';
  if (code === 1001) return 'soon';
  return 'backoff';
}
