"""A room's delivery order on one node, as pure decisions with the ids passed in.

Redis pub/sub is at-most-once: a node keeps, per room, the last id it delivered, and
compares every message it hears with it. Nothing here touches Redis or a socket.
"""

from __future__ import annotations

from enum import Enum


class Step(Enum):
    DELIVER = "deliver"  # the next id: deliver it now
    DROP = "drop"  # delivered already (or held by the replay): drop it
    GAP = "gap"  # ids are missing before it: read them from the stream first
    RESTART = "restart"  # another epoch: the room's history started over


def step(epoch: str | None, last: int, msg_epoch: str, msg_id: int) -> Step:
    """What to do with message `msg_id` of `msg_epoch` after delivering `last` of `epoch`."""
    if epoch is not None and msg_epoch != epoch:
        return Step.RESTART
    if msg_id <= last:
        return Step.DROP
    if msg_id == last + 1:
        return Step.DELIVER
    return Step.GAP


def behind(last: int, stored_last: int) -> bool:
    """The position check: the stream holds ids this node has not delivered."""
    return stored_last > last
