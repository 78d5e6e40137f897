"""A room's delivery order on a node, decided without Redis (chat.cluster.feed)."""

from __future__ import annotations

import pytest

from chat.cluster.feed import Step, behind, step


@pytest.mark.parametrize(
    ("last", "incoming", "expected"),
    [
        (0, 1, Step.DELIVER),
        (41, 42, Step.DELIVER),
        (42, 42, Step.DROP),
        (42, 7, Step.DROP),
        (42, 44, Step.GAP),
        (0, 3, Step.GAP),
    ],
)
def test_step_by_id(last: int, incoming: int, expected: Step) -> None:
    """The next id is delivered, an old one dropped, a later one is a gap."""
    assert step("e1", last, "e1", incoming) is expected


def test_another_epoch_restarts_whatever_the_id() -> None:
    """A message of another epoch means the room's history started over."""
    assert step("e1", 5, "e2", 6) is Step.RESTART
    assert step("e1", 5, "e2", 1) is Step.RESTART


def test_unpositioned_feed_takes_any_epoch() -> None:
    """Before the feed knows its epoch, no message counts as a restart."""
    assert step(None, 0, "e2", 1) is Step.DELIVER


def test_behind_only_when_the_stream_is_ahead() -> None:
    """The position check fills only when the stream holds undelivered ids."""
    assert behind(4, 5)
    assert not behind(5, 5)
    assert not behind(6, 5)
