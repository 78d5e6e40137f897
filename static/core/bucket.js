// A token bucket on the client's side of a server limit, so that the client itself
// never trips it. Time is passed in, in ms.

export class TokenBucket {
  /** `rate` tokens a second, at most `burst` at once; starts full. */
  constructor(rate, burst, now) {
    this.rate = Math.max(rate, 0.01);
    this.burst = Math.max(1, burst);
    this.tokens = this.burst;
    this.at = now;
  }

  /**
   * A bucket a little inside the server's `{messages, per, burst}`: one token less and
   * a tenth slower, so that frames bunched up on the way still arrive within it.
   */
  static inside(limit, fallback, now) {
    const { rate, burst } = readRate(limit) || readRate(fallback);
    return new TokenBucket(rate * 0.9, Math.max(1, burst - 1), now);
  }

  /** Take new limits (a `settings` frame) without forgetting what was spent. */
  retune(limit, now) {
    const read = readRate(limit);
    if (!read) return;
    this.refill(now);
    this.rate = Math.max(read.rate * 0.9, 0.01);
    this.burst = Math.max(1, read.burst - 1);
    this.tokens = Math.min(this.tokens, this.burst);
  }

  refill(now) {
    if (now > this.at) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
      this.at = now;
    }
  }

  /** ms until a token is there (0: now). */
  delay(now) {
    this.refill(now);
    // Whole ms, rounded up: a wait that rounds away to nothing would never refill.
    return this.tokens >= 1 ? 0 : Math.max(1, Math.ceil(((1 - this.tokens) / this.rate) * 1000));
  }

  take(now) {
    this.refill(now);
    this.tokens -= 1;
  }
}

function readRate(limit) {
  if (!limit || typeof limit !== 'object') return null;
  const { messages, per, burst } = limit;
  if (!(messages > 0 && per > 0 && burst >= 1)) return null;
  return { rate: messages / per, burst };
}
