"""The chat page in headless Chromium against a real `python -m chat` process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from chat import auth
from tests.browser import (
    CONFIG,
    CONNECTED,
    HEARTBEAT_TIMEOUT,
    RECONNECT_WAIT,
    WAIT,
    ChatPage,
    OpenPage,
    browser_fixture,  # noqa: F401 (fixtures, found by pytest under their names)
    open_page_fixture,  # noqa: F401
    scripted_page_server,
    server_fixture,  # noqa: F401
    servers_fixture,  # noqa: F401
    start_server,
    welcome_for,
)
from tests.helpers import Peer
from tests.serverproc import ServerProcess, write_config

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

SCREENSHOT: Final = Path(__file__).parents[1] / "docs" / "screenshot.png"

async def test_two_users_exchange_messages(open_page: OpenPage) -> None:
    """Two pages sign in to lobby and each sees every message exactly once, in order."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    for page in (alice, bob):
        await expect(page.members).to_have_text(["alice", "bob"])
        await expect(page.page.locator("#room-title")).to_have_text("#lobby")

    await alice.say("hi bob")
    await bob.see("hi bob")
    await bob.say("hello alice")
    await alice.see("hello alice")
    await alice.say("how are you?")
    for page in (alice, bob):
        texts = page.page.locator("#messages li.message .text")
        await expect(texts).to_have_text(["hi bob", "hello alice", "how are you?"])
        await expect(page.page.locator("#messages li.message .nick")).to_have_text(
            ["alice", "bob", "alice"]
        )
        page.assert_no_page_errors()


async def test_markup_in_a_message_is_shown_as_text(open_page: OpenPage) -> None:
    """A message made of HTML shows literally and creates no element, runs no script."""
    payload = "<img src=x onerror=alert(1)>"
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    await alice.say(payload)
    await bob.see(payload)
    await bob.say("<b>bold?</b> &amp;")
    await alice.see("<b>bold?</b> &amp;")
    for page in (alice, bob):
        await expect(page.page.locator("#messages img")).to_have_count(0)
        await expect(page.page.locator("#messages b")).to_have_count(0)
        page.assert_no_page_errors()


async def test_status_log_and_labels_are_accessible(open_page: OpenPage) -> None:
    """#status is a status reading connected, the list is a log, the inputs have visible labels."""
    alice = await open_page()
    page = alice.page
    await alice.sign_in("alice")
    status = page.get_by_role("status")
    await expect(status).to_have_count(1)
    await expect(status).to_have_id("status")
    await expect(status).to_have_text(CONNECTED)
    await expect(page.get_by_role("button", name="Reconnect now")).to_be_hidden()
    log = page.get_by_role("log")
    await expect(log).to_have_count(1)
    await expect(log).to_have_id("messages")
    await alice.say("in the log")
    await expect(log.locator("li.message")).to_have_count(1)
    for label, control in (("Nick", "nick"), ("Message", "text")):
        await expect(page.get_by_label(label, exact=True)).to_have_id(control)
        await expect(page.locator(f"label[for={control}]")).to_be_visible()
        await expect(page.locator(f"label[for={control}]")).to_have_text(label)
    alice.assert_no_page_errors()


async def test_stopped_server_is_detected_and_pending_message_sent_once(
    open_page: OpenPage, server: ServerProcess
) -> None:
    """A stopped server is noticed; a message typed meanwhile arrives once after SIGCONT."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    await alice.say("before the stop")
    await bob.see("before the stop")

    server.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        left_ms = (HEARTBEAT_TIMEOUT + 1 - (time.monotonic() - stopped_at)) * 1000
        await expect(alice.status).to_have_text("server not responding", timeout=left_ms)
        await expect(alice.status).to_contain_text("reconnecting", timeout=WAIT)
        await expect(alice.page.get_by_role("button", name="Reconnect now")).to_be_visible()
        await alice.type_message("typed while stopped")
        await expect(alice.message("typed while stopped")).to_have_count(1)
        await expect(alice.pending).to_have_count(1)
        await expect(alice.pending).to_contain_text("typed while stopped")
    finally:
        server.send_signal(signal.SIGCONT)

    await alice.joined("alice", timeout=RECONNECT_WAIT)
    await bob.joined("bob", timeout=RECONNECT_WAIT)
    for page in (alice, bob):
        await page.see("typed while stopped", timeout=RECONNECT_WAIT)
    await expect(alice.pending).to_have_count(0)
    # Anything sent twice would have arrived before a later message.
    await bob.say("after the stop")
    for page in (alice, bob):
        await page.see("after the stop")
        await expect(page.page.locator("#messages li.message .text")).to_have_text(
            ["before the stop", "typed while stopped", "after the stop"]
        )
        page.assert_no_page_errors()


async def test_page_reconnects_after_server_restart(
    open_page: OpenPage, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """After the server restarts on the same port both pages come back and can chat."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    await alice.say("before the restart")
    await bob.see("before the restart")

    old = servers[0]
    old.send_signal(signal.SIGTERM)
    assert await old.wait_async(within=5) == 0  # polls: the browser's loop keeps running
    servers.append(start_server(tmp_path, port=old.port))

    await alice.joined("alice", timeout=RECONNECT_WAIT)
    await bob.joined("bob", timeout=RECONNECT_WAIT)
    for page in (alice, bob):
        await expect(page.members).to_have_text(["alice", "bob"], timeout=RECONNECT_WAIT)
    await bob.say("back again")
    await alice.see("back again")
    await alice.say("welcome back")
    await bob.see("welcome back")
    for page in (alice, bob):
        # The memory history started over: what was read stays, above a divider.
        await expect(page.page.locator("#messages li:not(.presence)")).to_have_text(
            [
                re.compile("before the restart$"),
                re.compile("history over"),
                re.compile("back again$"),
                re.compile("welcome back$"),
            ]
        )
        page.assert_no_page_errors()


async def test_reload_keeps_nick_and_hash_picks_room(open_page: OpenPage) -> None:
    """A reload signs in again with the stored nick; #room=dev opens that room."""
    alice = await open_page()
    await alice.sign_in("alice")
    await alice.say("before the reload")

    await alice.page.reload()
    await expect(alice.page.get_by_label("Nick", exact=True)).to_have_value("alice")
    await alice.joined("alice")
    await expect(alice.page.locator("#room-title")).to_have_text("#lobby")
    await alice.see("before the reload")  # replayed with `joined`

    bob = await open_page("/#room=dev")
    await expect(bob.page.locator("#room-title")).to_have_text("#dev")
    await bob.sign_in("bob")
    await expect(bob.page.locator("#rooms .room-switch")).to_have_text(["#dev"])
    await bob.say("dev talk")

    # A fresh load at #room=dev opens dev, signed in at once with the stored nick.
    await alice.page.goto("about:blank")
    await alice.page.goto(alice.url.split("#")[0] + "#room=dev")
    await alice.joined("alice")
    await expect(alice.page.locator("#room-title")).to_have_text("#dev")
    await expect(alice.page.locator("#rooms .room-switch")).to_have_text(["#dev"])
    await alice.see("dev talk")
    await expect(bob.members).to_have_text(["alice", "bob"])
    for page in (alice, bob):
        page.assert_no_page_errors()


async def test_security_headers_and_no_console_errors(open_page: OpenPage) -> None:
    """The page is served with CSP, nosniff and same-origin referrers, and logs no errors."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    assert alice.response is not None
    assert alice.response.status == 200
    headers = await alice.response.all_headers()
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"

    await alice.sign_in("alice")
    await bob.sign_in("bob")
    await alice.say("hello")
    await bob.see("hello")
    await bob.page.get_by_label("Join room").fill("dev")
    await bob.page.get_by_label("Join room").press("Enter")
    await expect(bob.page.locator("#room-title")).to_have_text("#dev")
    await bob.say("anyone here?")
    await bob.page.get_by_role("button", name="Leave #dev").click()
    await expect(bob.page.locator("#room-title")).to_have_text("#lobby")
    await bob.say("back in the lobby")
    await alice.see("back in the lobby")
    for page in (alice, bob):
        assert page.console_errors == []
        assert await page.csp_violations() == []
        page.assert_no_page_errors()


async def test_screenshot(browser: Browser, tmp_path: Path) -> None:
    """Two people at 1280x800: a day divider, a grouped run, a link, a mention (docs/ on demand)."""
    now = time.time()
    # A time zone in which it is early afternoon now, so the picture reads like a workday.
    offset = max(-11, min(11, (14 - time.gmtime(now).tm_hour + 12) % 24 - 12))
    zone = "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-2 is UTC+2
    ms = int(now * 1000)
    minute, day = 60_000, 86_400_000
    said = [
        ("tom", ms - day - 180 * minute, "Release notes draft: https://example.com/releases/2.4"),
        ("maria", ms - day - 170 * minute, "Thanks, I'll read them first thing tomorrow."),
        ("tom", ms - 42 * minute, "Morning maria! The migration ran fine on staging."),
        ("tom", ms - 41 * minute, "Dashboards look calm so far."),
        ("tom", ms - 40 * minute, "Changelog: https://example.com/changelog#2.4"),
        ("maria", ms - 31 * minute, "Great, the notes read well.\nShipping at 3 pm then."),
    ]
    history = [
        {"type": "message", "room": "lobby", "id": n, "nick": nick, "text": text, "ts": ts,
         "cid": None}
        for n, (nick, ts, text) in enumerate(said, start=1)
    ]  # fmt: skip

    async def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        kind = frame["type"]
        if kind == "hello":
            return [welcome_for(frame["nick"])]
        if kind == "join":
            room = frame["room"]
            return [{"type": "joined", "room": room, "epoch": "e1", "members": ["maria", "tom"],
                     "messages": history if room == "lobby" else [], "complete": True}]  # fmt: skip
        if kind == "say":
            stored = {"room": frame["room"], "id": len(history) + 1, "ts": int(time.time() * 1000)}
            return [
                {"type": "ack", "cid": frame["cid"], **stored},
                {"type": "message", "nick": "maria", "text": frame["text"], "cid": frame["cid"],
                 **stored},
                {"type": "message", "room": "release", "id": 1, "nick": "tom", "cid": None,
                 "text": "Tagged v2.4.0.", "ts": stored["ts"]},
                {"type": "typing", "room": "lobby", "nick": "tom"},
            ]  # fmt: skip
        return []

    async with scripted_page_server(answer) as url:
        maria = await ChatPage.open(browser, url, width=1280, height=800, timezone_id=zone)
        try:
            await maria.sign_in("maria")
            page = maria.page
            await page.get_by_label("Join room").fill("release")
            await page.get_by_label("Join room").press("Enter")
            await expect(page.locator("#room-title")).to_have_text("#release")
            await page.locator("#rooms .room-switch", has_text="#lobby").click()
            await maria.say("@tom could you watch the error rate during the rollout?")
            await expect(page.locator("#typing")).to_have_text("tom is typing…")
            await expect(page.locator("#rooms .unread:not([hidden])")).to_have_text(["1"])
            await expect(page.locator("#messages .day")).to_have_text(["Yesterday", "Today"])
            await expect(page.locator("#messages li.grouped")).to_have_count(2)
            await expect(page.locator("#messages mark.mention")).to_have_text(["maria"])
            await expect(page.locator("#messages a")).to_have_count(2)
            await page.locator("#text").blur()

            # Only a deliberate run rewrites the committed picture (its clock times change).
            deliberate = os.environ.get("CHAT_SCREENSHOT") == "1"
            target = SCREENSHOT if deliberate else tmp_path / "page.png"
            await page.screenshot(path=str(target))
            assert target.stat().st_size > 10_000
            assert SCREENSHOT.stat().st_size > 10_000
            maria.assert_no_page_errors()
        finally:
            await maria.close()


async def test_typing_right_after_sending_is_announced(open_page: OpenPage) -> None:
    """Typing within a second of the last notice is announced once the second has passed."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
    typing = bob.page.locator("#typing")
    box = alice.page.get_by_label("Message", exact=True)
    # All three within a few milliseconds: the second burst of typing comes well inside
    # the page's one-notice-a-second gap.
    await box.press_sequentially("first")
    await box.press("Enter")
    await box.press_sequentially("x")
    await bob.see("first")  # a message from alice clears her typing line
    await expect(typing).to_have_text("alice is typing…")
    await box.press("Enter")
    await bob.see("x")
    await expect(typing).to_have_text("")
    for page in (alice, bob):
        page.assert_no_page_errors()


async def test_token_mode_signs_in_with_a_pasted_or_linked_token(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Token mode: a refused token is said so and forgotten; a good one signs in."""
    secret = "browser-test-secret-of-32-bytes-at-least"
    token_dir = tmp_path / "token-mode"
    token_dir.mkdir()
    write_config(token_dir, {**CONFIG, "auth": {"secret": secret}})
    server = start_server(token_dir)
    servers.append(server)
    pages: list[ChatPage] = []
    try:
        alice = await ChatPage.open(browser, server.url + "/")
        pages.append(alice)
        token_field = alice.page.get_by_label("Token", exact=True)
        assert await alice.page.evaluate("document.activeElement.id") == "token"
        await token_field.fill("not-a-token")
        await token_field.press("Enter")
        error = alice.page.locator("#nick-error")
        await expect(error).to_contain_text("refused this token")
        await expect(token_field).to_have_attribute("aria-invalid", "true")
        await expect(token_field).to_have_value("")

        await token_field.fill(auth.issue("alice", secret, time.time(), 600))
        await alice.page.locator("#nick-submit").click()
        await alice.joined("alice")
        await expect(error).to_have_text("")
        await expect(alice.page.get_by_label("Nick", exact=True)).to_have_value("alice")
        await alice.say("signed in by token")
        # The tab keeps the token (sessionStorage), never localStorage.
        await alice.page.reload()
        await alice.joined("alice")
        stored = await alice.page.evaluate("JSON.stringify(Object.values(localStorage))")
        assert "eyJ" not in stored

        # A link hands the page a token; it leaves the address at once.
        bob_token = auth.issue("bob", secret, time.time(), 600)
        bob = await ChatPage.open(browser, f"{server.url}/#room=lobby&token={bob_token}")
        pages.append(bob)
        await bob.joined("bob")
        await bob.see("signed in by token")
        assert "token" not in bob.page.url

        # An expired token, linked, is refused and the form asks for another.
        old = auth.issue("carol", secret, time.time() - 3600, 60)
        carol = await ChatPage.open(browser, f"{server.url}/#token={old}")
        pages.append(carol)
        await expect(carol.page.locator("#nick-error")).to_contain_text("refused this token")
        for page in pages:
            page.assert_no_page_errors()
    finally:
        for page in pages:
            await page.close()


async def test_a_long_room_keeps_the_newest_lines_and_pages_back(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Past 1000 messages a room drops its oldest lines; "Load older" brings them back."""
    busy_dir = tmp_path / "busy"
    busy_dir.mkdir()
    write_config(busy_dir, {
        **CONFIG,
        "history": {"backend": "memory", "retain": 5000},
        "limits": {"rate": {"messages": 100_000, "per": 1, "burst": 100_000}},
    })
    server = start_server(busy_dir)
    servers.append(server)
    reader = await ChatPage.open(browser, server.url + "/")
    try:
        await reader.sign_in("reader")

        async def say(nick: str, numbers: range) -> None:
            """Say m<n> for each n, from a bot of its own, faster than a page would."""
            async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
                bot = Peer(ws)
                await bot.hello(nick)
                await bot.join("lobby")
                for n in numbers:
                    await bot.send({"type": "say", "room": "lobby", "text": f"m{n}", "cid": f"{n}"})
                await bot.expect("ack", cid=f"{numbers[-1]}")

        await say("bot1", range(1, 1101))
        await reader.see("m1100")
        await expect(reader.messages).to_have_count(1000)
        await expect(reader.messages.first.locator(".text")).to_have_text("m101")
        # Scrolled up to the top, as a reader going back in time is: that loads a page.
        await reader.page.locator("#messages").evaluate("log => { log.scrollTop = 0; }")
        await expect(reader.messages).to_have_count(1050)
        await expect(reader.messages.first.locator(".text")).to_have_text("m51")
        # While older messages are being read, nothing is dropped.
        await say("bot2", range(1101, 1102))
        new_messages = reader.page.get_by_role("button", name="New messages ↓")
        await expect(new_messages).to_be_visible()
        await expect(reader.messages).to_have_count(1051)
        # Back at the bottom, the next message trims the room again.
        await new_messages.click()
        await say("bot3", range(1102, 1103))
        await reader.see("m1102")
        await expect(reader.messages).to_have_count(1000)
        await expect(reader.messages.first.locator(".text")).to_have_text("m103")
        reader.assert_no_page_errors()
    finally:
        await reader.close()


async def test_phone_width_and_dark_mode(open_page: OpenPage) -> None:
    """At phone width in dark mode: no sideways scrolling, rooms (opened) above the log, dark."""
    phone = await open_page(width=390, height=800, color_scheme="dark")
    await phone.sign_in("alice")
    await phone.say("small screens too")
    page = phone.page
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.get_by_role("button", name="Rooms").click()  # folded away on a phone
    rooms = await page.locator("#rooms").bounding_box()
    log = await page.locator("#messages").bounding_box()
    assert rooms is not None and log is not None
    assert rooms["y"] + rooms["height"] <= log["y"]  # stacked, not side by side
    assert log["width"] <= 390
    background = await page.evaluate(
        "getComputedStyle(document.body).backgroundColor.match(/\\d+/g).slice(0, 3).map(Number)"
    )
    assert sum(background) / 3 < 80, background  # a dark page
    phone.assert_no_page_errors()


async def test_keyboard_only(open_page: OpenPage) -> None:
    """Sign in, write a two-line message and send it with the keyboard alone."""
    alice = await open_page()
    page = alice.page

    async def tab_to(element_id: str) -> None:
        for _ in range(40):
            if await page.evaluate("document.activeElement && document.activeElement.id") == (
                element_id
            ):
                return
            await page.keyboard.press("Tab")
        pytest.fail(f"Tab never reached #{element_id}")

    await tab_to("nick")
    await page.keyboard.type("alice")
    await page.keyboard.press("Enter")
    await alice.joined("alice")
    await tab_to("text")
    await page.keyboard.type("first line")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    await page.keyboard.press("Enter")
    await expect(page.locator("#messages li.message .text")).to_have_text(
        ["first line\nsecond line"]
    )
    await expect(alice.pending).to_have_count(0)
    await expect(page.locator("#text")).to_have_value("")
    alice.assert_no_page_errors()


async def test_a_message_answered_unavailable_stays_pending_and_goes_again_with_its_cid(
    browser: Browser,
) -> None:
    """unavailable is no failure: the line stays pending, says why, and goes again with its cid."""
    says: list[dict[str, Any]] = []

    # The real page and static files, with a scripted /ws: the real server's Redis-down
    # path is built and tested with the server.
    async def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        kind = frame.get("type")
        if kind == "hello":
            return [welcome_for(frame["nick"])]
        if kind == "join":
            return [{"type": "joined", "room": frame["room"], "epoch": "e1",
                     "members": ["alice"], "messages": [], "complete": True}]
        if kind == "say":
            says.append(frame)
            if len(says) == 1:
                return [{"type": "error", "code": "unavailable", "ref": frame["cid"],
                         "message": "the server cannot reach Redis", "retry_after": 1.5}]
            return [
                {"type": "ack", "cid": frame["cid"], "room": frame["room"],
                 "id": 1, "ts": 1_700_000_000_000},
                {"type": "message", "room": frame["room"], "id": 1, "nick": "alice",
                 "text": frame["text"], "ts": 1_700_000_000_000, "cid": frame["cid"]},
            ]
        return []

    async with scripted_page_server(answer) as url:
        alice = await ChatPage.open(browser, url)
        try:
            await alice.sign_in("alice")
            await alice.type_message("kept for later")
            await expect(alice.pending).to_have_count(1)
            unavailable = "server unavailable, retrying"
            await expect(alice.pending.locator(".state")).to_have_text(unavailable)
            await expect(alice.status).to_have_text(unavailable)
            detail = alice.page.locator("#status-detail")
            await expect(detail).to_have_text(re.compile(r"^in \d s$"))
            await expect(alice.page.locator("#messages li.failed")).to_have_count(0)
            await alice.see("kept for later")
            await expect(alice.pending).to_have_count(0)
            await expect(alice.status).to_have_text(CONNECTED)
            assert len(says) == 2 and says[0] == says[1]  # the same cid, sent again
            assert await alice.csp_violations() == []
            alice.assert_no_page_errors()
        finally:
            await alice.close()
