// Messages typed and not yet acknowledged, in the order typed (chat/client/state.py's
// Outbox). Each keeps its cid for life: the server answers a repeated (room, nick, cid)
// with the original's ack, so sending one again after a reconnect or a refusal to be
// retried can never store it twice. Time is passed in, in ms.

// ms between two `say` frames, so that a backlog sent after a reconnect stays inside
// the server's rate (5 a second by default).
export const RESEND_GAP = 250;

/** Refusals that mean "not now": the message stays and goes again after retry_after. */
export const RETRYABLE = new Set(['rate_limited', 'unavailable']);

/** ms to wait before retrying a request refused with `rate_limited` or `unavailable`. */
export function retryAfter(f) {
  const s = Number(f && f.retry_after);
  return (s > 0 ? s : 1) * 1000;
}

export class Outbox {
  constructor() {
    this.entries = new Map(); // cid -> {cid, room, text, status: 'queued' | 'sent', retry}
    this.pausedUntil = 0;     // no say before this: the server asked us to wait
    this.lastSentAt = -Infinity;
  }

  add(cid, room, text) {
    const entry = { cid, room, text, status: 'queued', retry: null };
    this.entries.set(cid, entry);
    return entry;
  }

  get(cid) { return this.entries.get(cid); }
  has(cid) { return this.entries.has(cid); }
  delete(cid) { return this.entries.delete(cid); }
  values() { return this.entries.values(); }

  /**
   * The next say to send and how long to wait for it: the oldest queued one whose room
   * is joined on this connection (a say before its room's `joined` would be refused).
   * Returns null when there is none.
   */
  next(now, joined) {
    for (const entry of this.entries.values()) {
      if (entry.status === 'queued' && joined(entry.room)) {
        return { entry, wait: Math.max(this.pausedUntil, this.lastSentAt + RESEND_GAP) - now };
      }
    }
    return null;
  }

  sent(entry, now) {
    entry.status = 'sent';
    this.lastSentAt = now;
  }

  /**
   * The server refused the say for now (`code` in RETRYABLE): keep it and hold every
   * say back until `waitMs` has passed, so that they still go out in the order typed.
   */
  later(entry, code, waitMs, now) {
    entry.status = 'queued';
    entry.retry = code;
    this.pausedUntil = Math.max(this.pausedUntil, now + waitMs);
  }

  /** Whatever was sent and not acknowledged goes again on the next connection. */
  connectionLost() {
    for (const entry of this.entries.values()) if (entry.status === 'sent') entry.status = 'queued';
  }

  /**
   * What a reload must not lose: every message not yet acknowledged, in typing order,
   * with its cid (sent again with it, the server's dedup makes the delivery exactly once).
   */
  snapshot() {
    return [...this.entries.values()].map(({ cid, room, text }) => ({ cid, room, text }));
  }

  /**
   * Take back a snapshot (from storage, so checked: anything malformed is skipped).
   * Returns the entries added, each queued to be sent again.
   */
  restore(saved) {
    if (!Array.isArray(saved)) return [];
    const added = [];
    for (const item of saved) {
      if (!item || typeof item !== 'object') continue;
      const { cid, room, text } = item;
      if (typeof cid !== 'string' || !cid || [...cid].length > 64 || this.entries.has(cid)) continue;
      if (typeof room !== 'string' || typeof text !== 'string' || !text) continue;
      added.push(this.add(cid, room, text));
    }
    return added;
  }

  /** Forget the says of a room that was left; returns them. */
  dropRoom(name) {
    const dropped = [...this.entries.values()].filter((e) => e.room === name);
    for (const entry of dropped) this.entries.delete(entry.cid);
    return dropped;
  }
}
