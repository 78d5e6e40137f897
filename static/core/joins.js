// Joins and leaves on one connection, paced by `welcome.limits.join_rate` (contract
// section 3): after a reconnect the page re-joins every room at once, and a session in
// 20 rooms must not be refused for its own re-joins. The server answers joins and
// leaves in the order sent, so each kind keeps a FIFO of what is waiting for an answer.

import { TokenBucket } from './bucket.js';

// The contract's defaults: what a server that does not announce join_rate allows.
export const DEFAULT_JOIN_RATE = Object.freeze({ messages: 5, per: 1, burst: 40 });

export class JoinPacer {
  constructor(limit, now) {
    this.bucket = TokenBucket.inside(limit, DEFAULT_JOIN_RATE, now);
    this.queue = [];       // {type: 'join' | 'leave', room}, not sent yet, in order
    this.heldUntil = 0;    // the server said rate_limited or unavailable: nothing before this
    this.sent = { join: [], leave: [] }; // rooms sent, waiting for `joined` / `left`
  }

  join(room) {
    if (!this.queue.some((op) => op.type === 'join' && op.room === room)) {
      this.queue.push({ type: 'join', room });
    }
  }

  /** A left room: no join for it goes out any more; the leave takes its place in line. */
  leave(room) {
    this.queue = this.queue.filter((op) => op.room !== room);
    this.queue.push({ type: 'leave', room });
  }

  /** The next frame to send and how long to wait for it (ms), or null. */
  next(now) {
    if (!this.queue.length) return null;
    return { op: this.queue[0], wait: Math.max(this.heldUntil - now, this.bucket.delay(now)) };
  }

  /** The head of the queue goes out now. */
  take(now) {
    const op = this.queue.shift();
    this.bucket.take(now);
    this.sent[op.type].push(op.room);
    return op;
  }

  /** The answer to a join or leave came: which room it was for (null if unasked). */
  answered(type, room) {
    const fifo = this.sent[type];
    const at = room == null ? 0 : fifo.indexOf(room);
    if (at < 0 || !fifo.length) return null;
    return fifo.splice(at, 1)[0];
  }

  /** Refused for now: ask again first, once `waitMs` has passed. */
  retry(type, room, waitMs, now) {
    this.queue.unshift({ type, room });
    this.heldUntil = Math.max(this.heldUntil, now + waitMs);
  }
}
