// Liveness of the server as the page sees it (contract section 4): ping every
// `interval` s, count the server dead after `timeout` s without a frame. Pure: the
// caller passes the times (ms) and applies the verdict.

// s, until `welcome` tells the real ones; also what a connect attempt gets.
export const DEFAULT_HEARTBEAT = Object.freeze({ interval: 10, timeout: 30 });

/** The `{interval, timeout}` of a `welcome` or `settings`, or null when it is not usable. */
export function readHeartbeat(hb) {
  if (!hb || typeof hb !== 'object') return null;
  const { interval, timeout } = hb;
  return interval > 0 && timeout > 0 ? { interval, timeout } : null;
}

/** ms between two ticks of the watchdog: often enough to notice a timeout promptly. */
export const tickPeriod = (hb) => Math.min(250, (hb.interval * 1000) / 4);

/**
 * One tick of the watchdog. Returns {verdict, lastFrameAt}:
 * - 'asleep': the tick came far later than planned, so timers were asleep (background
 *   tab, suspended laptop); silence across the sleep says nothing about the server.
 *   Ping now and give it a fair time to answer: `lastFrameAt` is moved up so that.
 * - 'dead': nothing arrived for `timeout`: drop the socket and reconnect.
 * - 'alive'.
 */
export function watch({ now, lastTickAt, period, lastFrameAt, heartbeat }) {
  const timeout = heartbeat.timeout * 1000;
  if (now - lastTickAt > Math.max(4 * period, 2000)) {
    const grace = Math.min(timeout / 2, Math.max(heartbeat.interval * 1000, 2000));
    return { verdict: 'asleep', lastFrameAt: Math.max(lastFrameAt, now - timeout + grace) };
  }
  if (now - lastFrameAt > timeout) return { verdict: 'dead', lastFrameAt };
  return { verdict: 'alive', lastFrameAt };
}
