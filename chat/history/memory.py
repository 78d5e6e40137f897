"""The in-memory history backend: fast, and gone with the process (a new epoch each start)."""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from dataclasses import dataclass, field
from itertools import islice

from chat.history import Message, NewMessage, Page, Replay, Stored, announce, plan_replay


@dataclass(slots=True)
class _Room:
    messages: deque[Message] = field(default_factory=deque)
    last_id: int = 0
    by_cid: dict[tuple[str, str], Message] = field(default_factory=dict)
    cid_keys: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> by_cid key

    @property
    def first_id(self) -> int:
        return self.messages[0].id if self.messages else self.last_id + 1

    def at(self, msg_id: int) -> int:
        """Index in `messages` of the first message with id >= msg_id (ids have no gaps)."""
        return max(0, min(len(self.messages), msg_id - self.first_id))


class MemoryHistory:
    instant = True  # nothing here awaits
    def __init__(self, retain: int) -> None:
        self._retain = retain
        self._rooms: dict[str, _Room] = {}
        # Restarting the process starts every room's history over: a new epoch.
        self.epoch = secrets.token_hex(8)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def check(self) -> str:
        return "ok"

    async def append(self, new: NewMessage, stored: Stored | None = None) -> tuple[Message, bool]:
        answer = self._append(new)
        announce(stored, *answer)
        return answer

    def _append(self, new: NewMessage) -> tuple[Message, bool]:
        state = self._rooms.setdefault(new.room, _Room())
        cid = new.cid
        if cid is not None and (old := state.by_cid.get((new.key, cid))) is not None:
            return old, False
        state.last_id += 1
        message = Message(new.room, state.last_id, new.nick, new.text, new.ts, cid)
        state.messages.append(message)
        if cid is not None:
            state.by_cid[(new.key, cid)] = message
            state.cid_keys[message.id] = (new.key, cid)
        while len(state.messages) > self._retain:
            gone = state.messages.popleft()
            # The cid index holds exactly the retained messages.
            if (index_key := state.cid_keys.pop(gone.id, None)) is not None:
                del state.by_cid[index_key]
        return message, True

    async def find(self, room: str, key: str, cid: str) -> Message | None:
        state = self._rooms.get(room)
        return None if state is None else state.by_cid.get((key, cid))

    async def replay(
        self, room: str, since: int | None, client_epoch: str | None, replay: int, recover: int
    ) -> Replay:
        state = self._rooms.get(room) or _Room()
        plan = plan_replay(
            since, client_epoch, self.epoch, state.first_id, state.last_id, replay, recover
        )
        start = state.at(plan.after + 1)
        start = max(start, len(state.messages) - plan.newest)
        messages = list(islice(state.messages, start, None))
        return Replay(self.epoch, messages, plan.complete, state.last_id)

    async def page(self, room: str, before: int | None, limit: int) -> Page:
        state = self._rooms.get(room)
        if state is None:
            return Page([], False)
        end = len(state.messages) if before is None else state.at(before)
        start = max(0, end - limit)
        return Page(list(islice(state.messages, start, end)), start > 0)

    async def rooms(self, after: str | None = None, limit: int | None = None) -> dict[str, int]:
        names = (
            name for name, state in self._rooms.items()
            if state.last_id and (after is None or name > after)
        )
        chosen = sorted(names) if limit is None else heapq.nsmallest(limit, names)
        return {name: self._rooms[name].last_id for name in chosen}

