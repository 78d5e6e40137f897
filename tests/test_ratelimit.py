"""The token bucket behind `say` rate limiting: a pure decision with time passed in."""

from __future__ import annotations

import pytest

from chat.ratelimit import TokenBucket

# The contract's defaults: 5 messages per 1.0 s, burst 10.
MESSAGES = 5
PER = 1.0
BURST = 10


def default_bucket(now: float = 0.0) -> TokenBucket:
    return TokenBucket.full(MESSAGES, PER, BURST, now)


def test_full_bucket_starts_with_burst_tokens() -> None:
    """A new bucket is full: burst tokens, refilling at messages/per."""
    bucket = default_bucket(now=3.0)
    assert bucket.tokens == BURST
    assert bucket.burst == BURST
    assert bucket.rate == MESSAGES / PER
    assert bucket.updated == 3.0


def test_burst_allowed_at_once() -> None:
    """`burst` messages at the same instant are all allowed."""
    bucket = default_bucket()
    assert [bucket.take(0.0) for _ in range(BURST)] == [0.0] * BURST


def test_refused_after_burst_with_retry_after() -> None:
    """The message after the burst is refused with the time until one token."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    assert bucket.take(0.0) == pytest.approx(PER / MESSAGES)


def test_retry_after_shrinks_as_time_passes() -> None:
    """retry_after counts down to the next token."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    assert bucket.take(0.05) == pytest.approx(0.15)
    assert bucket.take(0.125) == pytest.approx(0.075)


def test_refusal_spends_nothing() -> None:
    """Refused takes do not push the next token further away."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    for _ in range(5):
        assert bucket.take(0.0) > 0
    assert bucket.take(0.2) == 0.0


def test_refills_at_messages_per_second() -> None:
    """After emptying, one token returns every per/messages seconds."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    assert bucket.take(0.2) == 0.0
    assert bucket.take(0.2) > 0
    assert bucket.take(0.4) == 0.0
    assert bucket.take(0.4) > 0


def test_sustained_rate() -> None:
    """Over a long run no more than burst + rate * elapsed messages get through."""
    bucket = default_bucket()
    allowed = sum(1 for step in range(1000) if bucket.take(step * 0.01) == 0.0)
    # 10 s at 5/s plus the initial burst of 10 (t runs 0 .. 9.99).
    assert allowed == BURST + int(9.99 * MESSAGES)


def test_never_exceeds_burst() -> None:
    """A long idle period refills only up to burst."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    results = [bucket.take(3600.0) for _ in range(BURST + 1)]
    assert results[:BURST] == [0.0] * BURST
    assert results[BURST] == pytest.approx(PER / MESSAGES)
    assert bucket.tokens <= BURST


def test_idle_full_bucket_stays_at_burst() -> None:
    """A full bucket left alone does not grow past burst."""
    bucket = default_bucket()
    bucket.take(1000.0)
    assert bucket.tokens == BURST - 1


@pytest.mark.parametrize(
    ("messages", "per", "burst"), [(1, 1.0, 1), (2, 0.5, 3), (1, 60.0, 2), (0.5, 1.0, 1)]
)
def test_other_rates(messages: float, per: float, burst: int) -> None:
    """Burst then refusal with retry_after = per/messages holds for any configuration."""
    bucket = TokenBucket.full(messages, per, burst, 0.0)
    assert [bucket.take(0.0) for _ in range(burst)] == [0.0] * burst
    assert bucket.take(0.0) == pytest.approx(per / messages)


def test_retry_after_is_enough_after_a_full_wait() -> None:
    """Waiting the retry_after given on an empty bucket is enough for the next take."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    wait = bucket.take(0.0)
    assert bucket.take(0.0 + wait) == 0.0


def test_retry_after_is_enough_after_a_partial_refill() -> None:
    """Retrying exactly retry_after after a refusal is allowed, whatever the refill so far."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    # 0.02 s in, 0.1 of a token has come back; the answer is "wait 0.18 s more".
    wait = bucket.take(0.02)
    assert wait > 0
    assert bucket.take(0.02 + wait) == 0.0


def test_retune_caps_level_to_smaller_burst() -> None:
    """A smaller burst on reload caps the tokens held; the new rate refills from there."""
    bucket = default_bucket()
    bucket.retune(1, 1.0, 3, now=0.0)
    assert (bucket.rate, bucket.burst, bucket.tokens) == (1.0, 3, 3)
    for _ in range(3):
        assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(1.0)


def test_retune_larger_burst_grants_no_free_tokens() -> None:
    """A larger burst is reached by refilling at the new rate, not handed out at once."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    bucket.retune(10, 1.0, 100, now=0.0)
    assert bucket.tokens == pytest.approx(0.0)
    assert bucket.take(0.1) == 0.0  # 10 per second: one token after 0.1 s
    bucket.take(100.0)
    assert bucket.tokens == pytest.approx(99.0)


def test_retune_counts_time_before_it_at_the_old_rate() -> None:
    """Tokens earned before the reload are earned at the old rate."""
    bucket = default_bucket()
    for _ in range(BURST):
        bucket.take(0.0)
    bucket.retune(1, 1.0, BURST, now=1.0)  # 1 s at the old 5/s: 5 tokens
    assert bucket.tokens == pytest.approx(5.0)
    assert bucket.updated == 1.0
