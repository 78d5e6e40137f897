"""The page's sign-in, focus and reconnection in headless Chromium against `python -m chat`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path
from typing import Final

import aiohttp
import jwt
import pytest
from playwright.async_api import Browser, expect
from playwright.async_api import Error as PlaywrightError

from tests.browser import (
    CONFIG,
    CONNECTED,
    ChatPage,
    Frame,
    OpenPage,
    browser_fixture,  # noqa: F401 (fixtures, found by pytest under their names)
    open_page_fixture,  # noqa: F401
    scripted_page_server,
    server_fixture,  # noqa: F401
    servers_fixture,  # noqa: F401
    start_server,
    welcome_for,
)
from tests.helpers import Peer, until
from tests.serverproc import ServerProcess, write_config

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

FOUND_WITHIN: Final = 2.5  # s after the server listens again: "about 2 s", and a margin
OUTAGE: Final = 6.0  # s the server stays down: long enough for the back-off to widen

# Records every write to the live status region (runs before the page's scripts).
_STATUS_WATCH: Final = """
window.__statusTexts = [];
document.addEventListener('DOMContentLoaded', () => {
  const s = document.getElementById('status');
  new MutationObserver(() => window.__statusTexts.push(s.textContent))
    .observe(s, { subtree: true, childList: true, characterData: true });
});
"""


def issue_token(sub: str, secret: str) -> str:
    return jwt.encode({"sub": sub}, secret, algorithm="HS256")


async def active_id(page: ChatPage) -> str:
    result: str = await page.page.evaluate("document.activeElement && document.activeElement.id")
    return result


async def test_signed_out_until_welcome_and_focus_follows_sign_in_and_rooms(
    open_page: OpenPage,
) -> None:
    """Signed out until welcome; the message box has the focus after sign-in, join and leave."""
    alice = await open_page()
    page = alice.page
    await expect(alice.status).to_have_text("signed out")
    await expect(page.get_by_role("button", name="Reconnect now")).to_be_hidden()
    await page.get_by_label("Nick", exact=True).fill("alice")
    await page.get_by_label("Nick", exact=True).press("Enter")
    await alice.joined("alice")
    await expect(page.locator("#text")).to_be_focused()

    await page.get_by_label("Join room").fill("dev")
    await page.get_by_label("Join room").press("Enter")
    await expect(page.locator("#room-title")).to_have_text("#dev")
    await expect(page.locator("#text")).to_be_focused()
    await page.get_by_role("button", name="Leave #dev").click()
    await expect(page.locator("#room-title")).to_have_text("#lobby")
    await expect(page.locator("#text")).to_be_focused()
    alice.assert_no_page_errors()


TOKEN_SECRET: Final = "browser-test-secret-of-32-bytes-at-least"


def token_server(servers: list[ServerProcess], tmp_path: Path) -> ServerProcess:
    """A server in token mode (auth.secret TOKEN_SECRET), stopped with the test's others."""
    token_dir = tmp_path / "token-mode"
    token_dir.mkdir()
    write_config(token_dir, {**CONFIG, "auth": {"secret": TOKEN_SECRET}})
    server = start_server(token_dir)
    servers.append(server)
    return server


async def test_focus_moves_to_the_message_box_after_a_token_sign_in(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Token mode: after pasting a token and pressing Enter, typing goes to the message."""
    server = token_server(servers, tmp_path)
    dave = await ChatPage.open(browser, f"{server.url}/")
    try:
        await expect(dave.status).to_have_text("signed out")
        await expect(dave.page.locator("#token")).to_be_focused()
        await dave.page.locator("#token").fill(issue_token("dave", TOKEN_SECRET))
        await dave.page.locator("#token").press("Enter")
        await dave.joined("dave")
        await expect(dave.page.locator("#text")).to_be_focused()
        dave.assert_no_page_errors()
    finally:
        await dave.close()


async def test_a_room_opened_from_the_address_takes_the_focus_to_the_message_box(
    open_page: OpenPage,
) -> None:
    """`#room=...` (a link, the address bar): the room is shown and the message box focused."""
    alice = await open_page()
    await alice.sign_in("alice")
    page = alice.page
    await page.get_by_label("Join room").focus()
    await page.evaluate("location.hash = '#room=dev'")
    await expect(page.locator("#room-title")).to_have_text("#dev")
    await expect(page.locator("#text")).to_be_focused()
    alice.assert_no_page_errors()


async def test_a_refused_token_says_so_and_offers_no_reconnect(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """A refused token: the status says so and "Reconnect now" is not offered."""
    server = token_server(servers, tmp_path)
    carol = await ChatPage.open(browser, f"{server.url}/#token=not-a-token")
    try:
        await expect(carol.status).to_have_text("signed out: token refused")
        await expect(carol.page.locator("#nick-error")).to_contain_text("refused this token")
        await expect(carol.page.get_by_role("button", name="Reconnect now")).to_be_hidden()
        await expect(carol.page.locator("#token")).to_be_focused()
        carol.assert_no_page_errors()
    finally:
        await carol.close()


async def test_a_restarted_server_is_found_within_about_two_seconds(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """After a long outage the page is back within ~2 s of the server listening again."""
    db_dir = tmp_path / "sqlite"
    db_dir.mkdir()
    history = {"backend": "sqlite", "path": str(db_dir / "chat.db")}
    write_config(db_dir, {**CONFIG, "history": history})
    first = start_server(db_dir)
    servers.append(first)
    alice = await ChatPage.open(browser, first.url + "/")
    try:
        await alice.page.add_init_script(_STATUS_WATCH)
        await alice.sign_in("alice")
        await alice.say("before the crash")
        await alice.page.reload()  # so that the status watcher runs from the start
        await alice.joined("alice")

        first.kill()  # a crash: no 1001, the page falls back to its back-off
        await expect(alice.status).to_have_text("reconnecting")
        await asyncio.sleep(OUTAGE)  # the back-off windows grow meanwhile
        await expect(alice.status).to_have_text("reconnecting")
        detail = await alice.page.locator("#status-detail").text_content()
        assert detail is not None and detail.startswith("in "), detail
        second = start_server(db_dir, port=first.port)  # returns once it listens
        listening = time.monotonic()
        servers.append(second)
        await expect(alice.status).to_have_text(CONNECTED, timeout=FOUND_WITHIN * 1000)
        assert time.monotonic() - listening < FOUND_WITHIN
        await alice.see("before the crash")  # same epoch: nothing shown twice
        await alice.say("after the restart")

        # The live region spoke at each change of state, never for a countdown or an RTT.
        texts = await alice.page.evaluate("window.__statusTexts")
        changes = [t for i, t in enumerate(texts) if i == 0 or texts[i - 1] != t]
        assert changes[-2:] == ["reconnecting", "connected"], changes
        assert len(texts) == len(changes), texts
        alice.assert_no_page_errors()
    finally:
        await alice.close()


async def test_a_message_queued_while_down_survives_a_reload_and_arrives_once(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Typed while the server is down, then a reload and a restart: delivered exactly once."""
    db_dir = tmp_path / "sqlite"
    db_dir.mkdir()
    write_config(db_dir, {**CONFIG, "history": {"backend": "sqlite", "path": str(db_dir / "db")}})
    first = start_server(db_dir)
    servers.append(first)
    alice = await ChatPage.open(browser, first.url + "/")
    bob = await ChatPage.open(browser, first.url + "/")
    try:
        await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
        first.send_signal(signal.SIGTERM)
        assert await first.wait_async(within=5) == 0
        await expect(alice.status).to_have_text("reconnecting")
        await alice.type_message("kept over the reload")
        await expect(alice.pending).to_have_count(1)
        # While something is pending the page asks before the tab goes.
        asks = await alice.page.evaluate(
            "() => { const e = new Event('beforeunload', {cancelable: true});"
            " window.dispatchEvent(e); return e.defaultPrevented; }"
        )
        assert asks is True
        with contextlib.suppress(PlaywrightError):  # the server is down: an error page
            await alice.page.reload()
        assert [d.split(":")[0] for d in alice.dialogs] == ["beforeunload"]
        alice.dialogs.clear()

        second = start_server(db_dir, port=first.port)
        servers.append(second)
        await alice.page.goto(second.url + "/")
        await alice.joined("alice")
        await alice.see("kept over the reload")
        await expect(alice.pending).to_have_count(0)
        await bob.joined("bob")
        await bob.see("kept over the reload")
        stored = await alice.page.evaluate("sessionStorage.getItem('chat.outbox')")
        assert stored is None
        # Exactly once in the store, as a newcomer's replay shows it.
        async with aiohttp.ClientSession() as http, http.ws_connect(second.ws_url) as ws:
            carol = Peer(ws)
            await carol.hello("carol")
            joined = await carol.join("lobby")
        texts = [m["text"] for m in joined["messages"]]
        assert texts.count("kept over the reload") == 1, texts
        for page in (alice, bob):
            page.assert_no_page_errors()
    finally:
        await alice.close()
        await bob.close()


async def rooms_with_members(http: aiohttp.ClientSession, server: ServerProcess) -> set[str]:
    async with http.get(f"{server.url}/api/rooms") as response:
        rooms = await response.json()
    return {room["room"] for room in rooms if room["members"] > 0}


async def until_rooms(http: aiohttp.ClientSession, server: ServerProcess, want: set[str],
                      within: float) -> None:
    """Poll /api/rooms (bounded) until exactly `want` have members."""
    async with asyncio.timeout(within):
        while await rooms_with_members(http, server) != want:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_twenty_rooms_rejoined_within_a_real_join_rate_after_a_restart(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """A page in 20 rooms on a server with a tight limits.join_rate (burst 3), the server
    restarted (close 1001, a new session): every room is joined again and the server
    answered none of the page's joins rate_limited."""
    tight = tmp_path / "tight-joins"
    tight.mkdir()
    limits = {"join_rate": {"messages": 10, "per": 1.0, "burst": 3}}
    write_config(tight, {**CONFIG, "limits": limits})
    first = start_server(tight)
    servers.append(first)
    rooms = {"lobby", *(f"r{n}" for n in range(1, 20))}
    alice = await ChatPage.open(browser, first.url + "/")
    try:
        await alice.sign_in("alice")
        join_box = alice.page.get_by_label("Join room")
        for n in range(1, 20):
            await join_box.fill(f"r{n}")
            await join_box.press("Enter")
            await expect(alice.page.locator("#room-title")).to_have_text(f"#r{n}")
        async with aiohttp.ClientSession() as http:
            await until_rooms(http, first, rooms, within=5)
            first.send_signal(signal.SIGTERM)
            assert await first.wait_async(within=5) == 0
            second = start_server(tight, port=first.port)
            servers.append(second)
            # 20 joins at the page's 9 a second after a burst of 2: about 2 s.
            await until_rooms(http, second, rooms, within=8)
            async with http.get(f"{second.url}/metrics") as response:
                metrics = await response.text()
        refused = re.search(r'^chat_errors_total\{code="rate_limited"\} (\S+)$', metrics, re.M)
        assert refused is None or float(refused.group(1)) == 0, refused
        await alice.joined("alice")
        alice.assert_no_page_errors()
    finally:
        await alice.close()


async def test_a_stored_message_whose_ack_was_lost_is_shown_once_after_a_reload(
    browser: Browser,
) -> None:
    """Stored, but neither ack nor echo came back; reloaded: the replay settles it, once."""
    stored: dict[str, Frame] = {}  # cid -> the message as stored
    says: list[Frame] = []

    async def answer(frame: Frame) -> list[Frame]:
        kind = frame["type"]
        if kind == "hello":
            return [welcome_for(frame["nick"])]
        if kind == "join":
            return [{"type": "joined", "room": frame["room"], "epoch": "e1",
                     "members": ["alice"], "messages": list(stored.values()),
                     "complete": True}]  # fmt: skip
        if kind == "say":
            says.append(frame)
            first = frame["cid"] not in stored
            message = stored.setdefault(frame["cid"], {
                "type": "message", "room": frame["room"], "id": len(stored) + 1,
                "nick": "alice", "text": frame["text"], "ts": int(time.time() * 1000),
                "cid": frame["cid"],
            })  # fmt: skip
            if first:
                return []  # stored; the connection "drops" before ack and echo leave
            # A repeated cid: the original's ack, nothing stored again (the contract).
            return [{"type": "ack", "cid": frame["cid"], "room": frame["room"],
                     "id": message["id"], "ts": message["ts"]}]  # fmt: skip
        return []

    async with scripted_page_server(answer) as url:
        alice = await ChatPage.open(browser, url)
        try:
            await alice.sign_in("alice")
            await alice.type_message("stored but unacknowledged")
            await expect(alice.pending).to_have_count(1)
            await until(lambda: len(stored) == 1)
            await alice.page.reload()  # asks first (something is pending), then reloads
            assert [d.split(":")[0] for d in alice.dialogs] == ["beforeunload"]
            alice.dialogs.clear()
            await alice.joined("alice")
            await alice.see("stored but unacknowledged")
            await expect(alice.pending).to_have_count(0)
            await expect(alice.messages).to_have_count(1)
            assert await alice.page.evaluate("sessionStorage.getItem('chat.outbox')") is None
            assert len(stored) == 1
            assert {say["cid"] for say in says} == set(stored)  # never under a new cid
            alice.assert_no_page_errors()
        finally:
            await alice.close()
