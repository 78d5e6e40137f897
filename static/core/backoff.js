// When to try again after a connection is lost. Delays are in ms; `random` is injected
// (Math.random in the page, a fixed sequence in tests).

export const BACKOFF_BASE = 0.5; // s: the first window
// s: the widest window. Lower than a server-side client would use: a page's person is
// waiting and looking, and the /healthz probe below keeps the cost of a dead network low.
export const BACKOFF_CAP = 10;
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

// ms between two cheap probes (GET healthz) while the page waits out a back-off: a
// restarted server is found within about PROBE_EVERY, however long the window is.
export const PROBE_EVERY = 1000;

/** The next probe, jittered (0.75 to 1.25 of PROBE_EVERY) so that pages do not probe in step. */
export const probeDelay = (random) => PROBE_EVERY * (0.75 + random() * 0.5);

/**
 * ms to wait after a probe found the server up before opening the socket: spread over
 * half a second, so that every page of a restarted server does not upgrade in the same
 * instant, and short enough to stay inside the 2 s the person should wait.
 */
export const afterProbeDelay = (random) => random() * 500;
