"""Liveness: the pure sweep that sorts peers into dead and quiet."""

from __future__ import annotations

from dataclasses import dataclass

from chat.heartbeat import STALL_FLOOR, Stall, recent, silence, stall_between, sweep

INTERVAL = 10.0
TIMEOUT = 30.0
NOW = 1000.0


@dataclass(eq=False)
class FakePeer:
    last_seen: float


def test_sweep_fresh_peer_is_neither() -> None:
    """A peer heard from just now is neither dead nor quiet."""
    peer = FakePeer(NOW)
    result = sweep([peer], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [])


def test_sweep_just_under_interval_is_neither() -> None:
    """Silent for less than the interval: left alone."""
    result = sweep([FakePeer(NOW - 9.5)], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [])


def test_sweep_silent_exactly_interval_is_quiet() -> None:
    """Silent for exactly the interval: quiet (gets a protocol ping)."""
    peer = FakePeer(NOW - INTERVAL)
    result = sweep([peer], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [peer])


def test_sweep_between_interval_and_timeout_is_quiet() -> None:
    """Silent longer than the interval but not past the timeout: quiet."""
    peer = FakePeer(NOW - 20.0)
    result = sweep([peer], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [peer])


def test_sweep_silent_exactly_timeout_is_quiet_not_dead() -> None:
    """Silent for exactly the timeout: not dead yet, still quiet."""
    peer = FakePeer(NOW - TIMEOUT)
    result = sweep([peer], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [peer])


def test_sweep_silent_past_timeout_is_dead_only() -> None:
    """Silent for more than the timeout: dead, and not also quiet."""
    peer = FakePeer(NOW - TIMEOUT - 0.25)
    result = sweep([peer], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([peer], [])


def test_sweep_never_heard_peer_long_ago_is_dead() -> None:
    """A peer last seen long ago (e.g. never said hello) is dead."""
    peer = FakePeer(0.0)
    assert sweep([peer], NOW, INTERVAL, TIMEOUT).dead == [peer]


def test_sweep_peer_from_the_future_is_neither() -> None:
    """A last_seen after now (negative silence) is neither dead nor quiet."""
    result = sweep([FakePeer(NOW + 5)], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [])


def test_sweep_no_peers() -> None:
    """No peers: nothing to do."""
    result = sweep([], NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([], [])


def test_sweep_mixed_peers_keep_their_order() -> None:
    """Each peer lands in the right list, in the order given."""
    fresh = FakePeer(NOW - 1)
    quiet_a = FakePeer(NOW - INTERVAL)
    dead_a = FakePeer(NOW - 31)
    quiet_b = FakePeer(NOW - TIMEOUT)
    dead_b = FakePeer(NOW - 500)
    result = sweep([fresh, quiet_a, dead_a, quiet_b, dead_b], NOW, INTERVAL, TIMEOUT)
    assert result.dead == [dead_a, dead_b]
    assert result.quiet == [quiet_a, quiet_b]


def test_sweep_many_dead_peers_in_one_call() -> None:
    """10000 peers that died at once are all returned by a single sweep."""
    peers = [FakePeer(NOW - TIMEOUT - 1 - n * 0.001) for n in range(10_000)]
    result = sweep(peers, NOW, INTERVAL, TIMEOUT)
    assert len(result.dead) == 10_000
    assert result.dead == peers
    assert result.quiet == []


def test_sweep_many_peers_mixed() -> None:
    """A large mixed population is split exactly."""
    dead = [FakePeer(NOW - 40) for _ in range(5000)]
    quiet = [FakePeer(NOW - 15) for _ in range(3000)]
    fresh = [FakePeer(NOW - 1) for _ in range(2000)]
    result = sweep(dead + quiet + fresh, NOW, INTERVAL, TIMEOUT)
    assert result.dead == dead
    assert result.quiet == quiet


def test_sweep_accepts_any_iterable() -> None:
    """sweep takes a one-shot iterable (e.g. a generator over connections)."""
    peers = [FakePeer(NOW - 40), FakePeer(NOW - 15)]
    result = sweep(iter(peers), NOW, INTERVAL, TIMEOUT)
    assert (result.dead, result.quiet) == ([peers[0]], [peers[1]])


def test_sweep_fractional_intervals() -> None:
    """Fractional seconds (as in the test config) use the same boundaries."""
    peers = [FakePeer(9.875), FakePeer(9.75), FakePeer(9.5), FakePeer(9.25)]
    result = sweep(peers, now=10.0, interval=0.25, timeout=0.5)
    assert [p.last_seen for p in result.quiet] == [9.75, 9.5]
    assert [p.last_seen for p in result.dead] == [9.25]


# --- stalls: time the server did not run is not counted against its peers


def test_stall_between_late_wake_is_a_stall() -> None:
    """A sweep due at 100 that runs at 130 (interval 5) saw a 30 s stall from 100."""
    assert stall_between(100.0, 130.0, 5.0) == Stall(100.0, 130.0)


def test_stall_between_ordinary_lateness_is_none() -> None:
    """Lateness within one more interval (or the floor) is load, not a stall."""
    assert stall_between(100.0, 104.9, 5.0) is None
    assert stall_between(100.0, 100.0 + STALL_FLOOR, 0.1) is None
    assert stall_between(100.0, 100.0 + STALL_FLOOR + 0.01, 0.1) is not None


def test_silence_discounts_the_stall_after_last_seen() -> None:
    """Only the part of a stall after the peer's last frame is taken off its silence."""
    stall = Stall(100.0, 130.0)
    assert silence(99.0, 131.0, [stall]) == 2.0  # 1 s before, 1 s after
    assert silence(110.0, 131.0, [stall]) == 1.0  # last seen during the stall
    assert silence(130.5, 131.0, [stall]) == 0.5  # after the stall: untouched


def test_sweep_peer_that_pinged_until_the_stall_is_not_dead() -> None:
    """A peer heard just before a long stall is neither dead nor quiet right after it."""
    peer = FakePeer(NOW - 0.5)
    stall = Stall(NOW + 4.0, NOW + 120.0)  # due at NOW + 4, ran again 116 s later
    result = sweep([peer], NOW + 120.0, INTERVAL, TIMEOUT, [stall])
    assert (result.dead, result.quiet) == ([], [])
    assert sweep([peer], NOW + 120.0, INTERVAL, TIMEOUT).dead == [peer]  # without it


def test_sweep_after_stall_still_reaps_peer_silent_in_running_time() -> None:
    """A peer silent for longer than the timeout of running time is dead despite a stall."""
    peer = FakePeer(NOW - TIMEOUT - 1)
    result = sweep([peer], NOW + 60.0, INTERVAL, TIMEOUT, [Stall(NOW, NOW + 60.0)])
    assert result.dead == [peer]


def test_sweep_stall_keeps_excusing_until_frames_are_read() -> None:
    """Sweeps after the stall, before the buffered frames are read, still excuse it."""
    peer = FakePeer(NOW - 0.5)
    stalls = [Stall(NOW + 4.0, NOW + 120.0)]
    for later in (0.1, 1.0, 5.0):
        result = sweep([peer], NOW + 120.0 + later, INTERVAL, TIMEOUT, stalls)
        assert result.dead == [], later


def test_recent_drops_stalls_no_peer_can_still_use() -> None:
    """A stall is kept while less than `timeout` of running time has passed since it."""
    old = Stall(0.0, 10.0)
    new = Stall(20.0, 50.0)
    assert recent([old, new], 70.0, TIMEOUT) == (old, new)  # 10 + 20 s running since old
    assert recent([old, new], 71.0, TIMEOUT) == (new,)
    assert recent([old, new], 80.0, TIMEOUT) == (new,)
    assert recent([old, new], 81.0, TIMEOUT) == ()
    assert recent([], 81.0, TIMEOUT) == ()
