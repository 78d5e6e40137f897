"""Two `python -m chat` nodes on one durable Redis behind a real nginx: a node dies.

Clients connect through nginx only, as they would in production; which node serves a
connection is read from each node's own `/metrics`. A node is killed with SIGKILL and
its clients come back through nginx to the surviving node (contract sections 5 and 7).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import aiohttp
import pytest

from chat.client import ChatClient
from tests.helpers import CLEANUP, NODE_TIMEOUT, Peer, merge
from tests.nginxproc import CLUSTER_TIMINGS, WAIT, Deployment, Reader, Seen, landed, open_on

# A node's death is noticed within node_timeout + cleanup.interval (contract section 7);
# this much more is allowed for a Redis round trip and pub/sub on a busy 2-core machine.
SLACK: Final = 1.0


@pytest.fixture
def deployment_config() -> dict[str, Any]:
    """The deployment's timings, and a rate limit that the clients here never reach."""
    return merge(dict(CLUSTER_TIMINGS), {"limits": {"rate": {"messages": 1000, "burst": 1000}}})


async def test_client_moves_to_the_surviving_node_without_loss_or_duplicates(
    deployment: Deployment, http: aiohttp.ClientSession
) -> None:
    """A node is killed mid-conversation: its client resumes on the other, ids 1..N once each."""
    # alice is the project's reconnecting client, through nginx like anyone else.
    before = await deployment.connections(http)
    alice = ChatClient(
        deployment.proxy.ws_url, "alice", session=http, backoff_base=0.05, backoff_cap=0.5
    )
    events = Seen()

    async def consume() -> None:
        async for event in alice.events():
            await events.add(event)

    consumer = asyncio.create_task(consume())
    readers: list[Reader] = []
    try:
        await alice.connect()
        doomed = await landed(deployment, http, before)
        survivor = 1 - doomed
        await alice.join("lobby")
        # bob stays on the surviving node; carol is on alice's and never comes back.
        bob = await open_on(deployment, http, survivor, "bob")
        readers.append(bob)
        await bob.peer.send({"type": "join", "room": "lobby"})
        joined = await bob.wait("joined", room="lobby")
        assert joined["members"] == ["alice", "bob"]
        carol = await open_on(deployment, http, doomed, "carol")
        readers.append(carol)
        await carol.peer.send({"type": "join", "room": "lobby"})
        await bob.wait("presence", event="join", nick="carol")
        old_session = alice.session

        for n in range(1, 6):
            await alice.say("lobby", f"m{n}", cid=f"c{n}")
        # m6..m10 go out together; the node dies as soon as the first is acked, so the
        # others are in flight: stored with the ack lost, or not stored at all.
        in_flight = [
            asyncio.create_task(alice.say("lobby", f"m{n}", cid=f"c{n}")) for n in range(6, 11)
        ]
        await asyncio.wait_for(in_flight[0], WAIT)
        deployment.nodes[doomed].kill()
        killed_at = time.monotonic()
        # Said while alice is away or coming back: queued, sent after the resume.
        later = [
            asyncio.create_task(alice.say("lobby", f"m{n}", cid=f"c{n}")) for n in range(11, 14)
        ]
        acks = await asyncio.wait_for(asyncio.gather(*in_flight, *later), WAIT)
        assert [ack["id"] for ack in acks] == list(range(6, 14))

        # carol's session ended with her node: bob sees her leave, and her nick is free.
        leave = await bob.wait(
            "presence", timeout=NODE_TIMEOUT + CLEANUP + SLACK, event="leave", nick="carol"
        )
        assert leave["reason"] == "timeout"
        reaped_after = time.monotonic() - killed_at
        assert reaped_after <= NODE_TIMEOUT + CLEANUP + SLACK, reaped_after
        readers.append(await open_on(deployment, http, survivor, "carol"))

        # One more message, from bob: anything delivered twice would come before it.
        await bob.peer.send({"type": "say", "room": "lobby", "text": "m14", "cid": "b14"})
        await bob.wait("message", id=14)
        await events.wait("message", id=14)
        expected = [(n, f"m{n}") for n in range(1, 15)]
        assert [(f["id"], f["text"]) for f in bob.of("message")] == expected
        assert [(e["id"], e["text"]) for e in events.of("message")] == expected
        assert events.of("reset") == []  # one epoch throughout

        # The resume was a takeover (the session still existed) or a new session (it had
        # been ended): both are fine; what bob saw of alice must match.
        connected = events.of("status", state="connected")
        assert len(connected) == 2, connected
        alice_presence = bob.of("presence", nick="alice")
        if connected[1]["resumed"]:
            assert alice.session == old_session
            assert alice_presence == []
        else:
            assert alice.session != old_session
            assert [(p["event"], p.get("reason")) for p in alice_presence] == [
                ("leave", "timeout"), ("join", None),
            ]
        # alice, bob and the new carol, all on the survivor.
        counts = await deployment.connections(http)
        assert (counts[doomed], counts[survivor]) == (-1, 3)
    finally:
        consumer.cancel()
        await alice.close()
        for reader in readers:
            await reader.close()
        await asyncio.gather(consumer, return_exceptions=True)


async def test_client_back_after_its_node_was_reaped_gets_a_new_session(
    deployment: Deployment, http: aiohttp.ClientSession
) -> None:
    """Back after the reaper: a new session, the nick free, recovery with since, cid deduped."""
    dave = await open_on(deployment, http, 0, "dave")
    bob = await open_on(deployment, http, 1, "bob")
    readers = [dave, bob]
    try:
        old_session = dave.peer.session
        await dave.peer.send({"type": "join", "room": "lobby"})
        epoch = (await dave.wait("joined", room="lobby"))["epoch"]
        await bob.peer.send({"type": "join", "room": "lobby"})
        await bob.wait("joined", room="lobby")
        for n in (1, 2):
            await dave.peer.send({"type": "say", "room": "lobby", "text": f"d{n}", "cid": f"d{n}"})
            await dave.wait("ack", cid=f"d{n}")
        # d3 is sent and its node killed at once: stored or not, its ack never comes.
        await dave.peer.send({"type": "say", "room": "lobby", "text": "d3", "cid": "d3"})
        deployment.nodes[0].kill()
        killed_at = time.monotonic()
        await dave.close()
        assert dave.of("ack", cid="d3") == []

        leave = await bob.wait(
            "presence", timeout=NODE_TIMEOUT + CLEANUP + SLACK, event="leave", nick="dave"
        )
        assert leave["reason"] == "timeout"
        assert time.monotonic() - killed_at <= NODE_TIMEOUT + CLEANUP + SLACK

        # What a well-behaved client does (contract section 5), spelled out.
        back = Reader(Peer(await http.ws_connect(deployment.proxy.ws_url, autoping=True)))
        readers.append(back)
        await back.peer.send({"type": "hello", "nick": "dave", "session": old_session})
        welcome = await back.wait("welcome")
        assert welcome["session"] != old_session  # the reaper ended the old one
        assert welcome["rooms"] == []
        await back.peer.send({"type": "join", "room": "lobby", "since": 2, "epoch": epoch})
        joined = await back.wait("joined", room="lobby")
        assert joined["epoch"] == epoch
        assert joined["complete"] is True
        assert joined["members"] == ["bob", "dave"]
        replayed = [(m["id"], m["text"], m["cid"]) for m in joined["messages"]]
        assert replayed in ([], [(3, "d3", "d3")])  # d3 was stored before the kill, or not
        await back.peer.send({"type": "say", "room": "lobby", "text": "d3", "cid": "d3"})
        ack = await back.wait("ack", cid="d3")
        assert ack["id"] == 3
        if replayed:
            assert ack["ts"] == joined["messages"][0]["ts"]  # the original's ack
        await back.peer.send({"type": "ping", "t": "still here"})
        assert (await back.wait("pong"))["t"] == "still here"

        await bob.peer.send({"type": "say", "room": "lobby", "text": "b4", "cid": "b4"})
        await bob.wait("message", id=4)
        await back.wait("message", id=4)
        texts = [(m["id"], m["text"]) for m in bob.of("message")]
        assert texts == [(1, "d1"), (2, "d2"), (3, "d3"), (4, "b4")]
        assert [(m["id"], m["text"]) for m in back.of("message")] == texts[2 + len(replayed):]
        presence = [(p["event"], p.get("reason")) for p in bob.of("presence", nick="dave")]
        assert presence == [("leave", "timeout"), ("join", None)]
    finally:
        for reader in readers:
            await reader.close()
