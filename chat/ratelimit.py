"""Token buckets: the decision is pure, time is passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # capacity
    tokens: float
    updated: float

    @classmethod
    def full(cls, messages: float, per: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=messages / per, burst=burst, tokens=burst, updated=now)

    def take(self, now: float) -> float:
        """Spend one token; 0.0 when allowed, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        # A retry exactly `retry_after` later must pass despite float rounding.
        if self.tokens >= 1.0 - 1e-9:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, messages: float, per: float, burst: float, now: float) -> None:
        """Take new parameters (a configuration reload) without handing out a free burst.

        Tokens earned until `now` are earned at the old rate; from then on the new rate
        applies, and the level kept is capped to the new burst.
        """
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.rate = messages / per
        self.burst = burst
        self.tokens = min(self.burst, self.tokens)

    def refund(self) -> None:
        """Give back a token spent on something that turned out not to count."""
        self.tokens = min(self.burst, self.tokens + 1.0)
