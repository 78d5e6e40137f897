"""Links, mentions, the tab title and notifications on the chat page in headless Chromium."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from chat.routes import CSP
from tests.browser import (
    CONFIG,
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

DASH: Final = "\N{EN DASH}"  # the title's separator

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

# Runs before the page's scripts: a Notification that records instead of showing (the
# permission granted), and a visibility the test sets, as a headless tab is never hidden.
_FAKE_ATTENTION: Final = """
window.__notes = [];
window.__asked = 0;
window.Notification = class extends EventTarget {
  constructor(title, options) {
    super();
    window.__notes.push({ title, body: options && options.body });
  }
  close() {}
  static get permission() { return window.__asked ? 'granted' : 'default'; }
  static requestPermission() { window.__asked += 1; return Promise.resolve('granted'); }
};
let visibility = 'visible';
Object.defineProperty(Document.prototype, 'visibilityState', { get: () => visibility });
Object.defineProperty(Document.prototype, 'hidden', { get: () => visibility === 'hidden' });
window.__setVisibility = (v) => {
  visibility = v;
  document.dispatchEvent(new Event('visibilitychange'));
};
"""


async def set_visibility(page: ChatPage, state: str) -> None:
    await page.page.evaluate("(v) => window.__setVisibility(v)", state)


async def test_links_are_anchors_opening_a_new_tab_without_opener(open_page: OpenPage) -> None:
    """http(s) links become <a target=_blank rel="noopener noreferrer">; other schemes stay text."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
    text = "see https://example.com/a?b=1&c=<d>. not javascript:alert(1) nor <a href=x>y</a>"
    await bob.say(text)
    await alice.see(text)
    links = alice.message(text).locator("a")
    await expect(links).to_have_count(1)
    await expect(links).to_have_text("https://example.com/a?b=1&c=")
    await expect(links).to_have_attribute("href", "https://example.com/a?b=1&c=")
    await expect(links).to_have_attribute("rel", "noopener noreferrer")
    await expect(links).to_have_attribute("target", "_blank")
    assert alice.response is not None
    assert (await alice.response.all_headers())["content-security-policy"] == CSP
    for page in (alice, bob):
        assert await page.csp_violations() == []
        page.assert_no_page_errors()


async def test_mentions_are_marked_counted_in_the_title_and_notified_when_hidden(
    open_page: OpenPage,
) -> None:
    """Own nick marked; the title counts unread and mentions; alerts only while hidden, opt-in."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.page.add_init_script(_FAKE_ATTENTION)
    await alice.page.reload()
    await asyncio.gather(alice.sign_in("Alice"), bob.sign_in("bob"))
    page = alice.page
    alerts = page.get_by_role("button", name="Mention alerts: off")
    await alerts.click()
    await expect(page.locator("#notify")).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#notify")).to_have_text("Mention alerts: on")
    assert await page.evaluate("window.__asked") == 1

    await bob.say("hello ALICE, and malice")
    await alice.see("hello ALICE, and malice")
    line = alice.message("hello ALICE, and malice")
    await expect(line.locator("mark.mention")).to_have_text(["ALICE"])
    await expect(line).to_have_class("message mentions-me")
    await expect(page).to_have_title(f"#lobby {DASH} Chat")
    await expect(bob.page.locator("mark.mention")).to_have_count(0)  # not bob's own nick

    await set_visibility(alice, "hidden")
    await bob.say("ping @alice.")
    await bob.say("no one named")
    await alice.see("no one named")
    await expect(page).to_have_title(f"(2, @1) #lobby {DASH} Chat")
    notes = await page.evaluate("window.__notes")
    assert notes == [{"title": "bob in #lobby", "body": "ping @alice."}]
    await set_visibility(alice, "visible")
    await expect(page).to_have_title(f"#lobby {DASH} Chat")

    # Another room on screen: lobby's messages count, a mention colours its badge.
    await page.get_by_label("Join room").fill("dev")
    await page.get_by_label("Join room").press("Enter")
    await expect(page.locator("#room-title")).to_have_text("#dev")
    await bob.say("alice? the build")
    await expect(page).to_have_title(f"(1, @1) #dev {DASH} Chat")
    await expect(page.locator("#rooms .unread.mentioned")).to_have_text("1")
    assert len(await page.evaluate("window.__notes")) == 1  # visible: no alert
    await page.locator("#rooms .room-switch", has_text="#lobby").click()
    await expect(page).to_have_title(f"#lobby {DASH} Chat")
    for chat in (alice, bob):
        chat.assert_no_page_errors()


# Android Chrome: the permission is granted, the constructor throws all the same.
_REFUSING_NOTIFICATION: Final = """
window.__tried = 0;
window.Notification = class {
  constructor() {
    window.__tried += 1;
    throw new TypeError("Failed to construct 'Notification': Illegal constructor.");
  }
  static get permission() { return 'granted'; }
  static requestPermission() { return Promise.resolve('granted'); }
};
localStorage.setItem('chat.notify', 'on');
"""


async def test_a_browser_that_refuses_to_notify_still_shows_the_mention(
    open_page: OpenPage,
) -> None:
    """`new Notification` throwing (Android Chrome) is swallowed: no page error, all else stands."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.page.add_init_script(_FAKE_ATTENTION)
    await alice.page.add_init_script(_REFUSING_NOTIFICATION)
    await alice.page.reload()
    await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
    page = alice.page
    await expect(page.locator("#notify")).to_have_text("Mention alerts: on")
    await set_visibility(alice, "hidden")
    await bob.say("alice, one")
    await bob.say("alice, two")
    await alice.see("alice, two")
    assert await page.evaluate("window.__tried") == 2
    await expect(page).to_have_title(f"(2, @2) #lobby {DASH} Chat")
    await expect(alice.message("alice, one").locator("mark.mention")).to_have_text("alice")
    # The page logs a frame handler that threw: none did.
    assert alice.console_errors == []
    for chat in (alice, bob):
        chat.assert_no_page_errors()


async def test_grouped_messages_day_dividers_and_full_dates(browser: Browser) -> None:
    """One person's run shares a header; days are divided; older messages show their date."""
    day = 86_400_000
    today = int(time.time() * 1000) // day * day  # the context's time zone is UTC
    minute = 60_000
    said = [
        ("bob", today - 2 * day + 600 * minute),
        ("bob", today - 2 * day + 602 * minute),  # grouped
        ("alice", today - 2 * day + 603 * minute),
        ("bob", today - day + 540 * minute),  # Yesterday
        ("bob", today + minute),  # Today
        ("bob", today + 2 * minute),  # grouped
        ("bob", today + 20 * minute),  # too long after: a header again
    ]
    messages = [
        {"type": "message", "room": "lobby", "id": n, "nick": nick, "text": f"m{n}", "ts": ts,
         "cid": None}
        for n, (nick, ts) in enumerate(said, start=1)
    ]  # fmt: skip

    async def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        if frame["type"] == "hello":
            return [welcome_for(frame["nick"])]
        if frame["type"] == "join":
            return [{"type": "joined", "room": "lobby", "epoch": "e1", "members": ["alice", "bob"],
                     "messages": messages, "complete": True}]  # fmt: skip
        return []

    async with scripted_page_server(answer) as url:
        alice = await ChatPage.open(browser, url)
        try:
            await alice.sign_in("alice")
            lines = alice.messages
            await expect(lines).to_have_count(len(said))
            grouped = [
                "grouped" in (await lines.nth(i).get_attribute("class") or "")
                for i in range(len(said))
            ]
            assert grouped == [False, True, False, False, False, True, False]
            days = alice.page.locator("#messages li.message > .day")
            two_days_ago = time.strftime("%A, %-d %B %Y", time.gmtime((today - 2 * day) / 1000))
            await expect(days).to_have_text([two_days_ago, "Yesterday", "Today"])
            full_date = re.compile(r"^\d{1,2} \w{3} \d{4}, 10:00$")
            await expect(lines.nth(0).locator("time")).to_have_text(full_date)
            await expect(lines.nth(4).locator("time")).to_have_text("00:01")
            # A grouped line keeps its nick for screen readers.
            await expect(lines.nth(1).get_by_text("bob", exact=True)).to_have_count(1)
            alice.assert_no_page_errors()
        finally:
            await alice.close()


async def test_a_tab_left_open_past_midnight_rewrites_its_days(browser: Browser) -> None:
    """At the next midnight, and when shown again days later, "Today" and bare times go stale."""
    evening = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)  # a Monday; the context is in UTC
    stamp = int(evening.timestamp() * 1000) - 60_000  # 23:58
    message = {"type": "message", "room": "lobby", "id": 1, "nick": "bob", "text": "late",
               "ts": stamp, "cid": None}  # fmt: skip

    async def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        if frame["type"] == "hello":
            return [welcome_for(frame["nick"])]
        if frame["type"] == "join":
            return [{"type": "joined", "room": "lobby", "epoch": "e1", "members": ["alice", "bob"],
                     "messages": [message], "complete": True}]  # fmt: skip
        return []

    async with scripted_page_server(answer) as url:
        alice = await ChatPage.open(browser, url)
        try:
            # Page time starts at 23:59 and flows on; timers run on the page's clock.
            await alice.page.clock.install(time=evening)
            await alice.page.reload()
            await alice.sign_in("alice")
            line = alice.message("late")
            await expect(line.locator(".day")).to_have_text("Today")
            await expect(line.locator("time")).to_have_text("23:58")

            await alice.page.clock.fast_forward("01:05")  # past midnight: its timer fires
            await expect(line.locator(".day")).to_have_text("Yesterday")
            await expect(line.locator("time")).to_have_text("30 Nov 2026, 23:58")

            # Days later, no timer due (a laptop asleep): shown again, the tab catches up.
            await alice.page.clock.set_system_time(evening + timedelta(days=3))
            await alice.page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
            await expect(line.locator(".day")).to_have_text("Monday, 30 November 2026")
            alice.assert_no_page_errors()
        finally:
            await alice.close()


async def test_scrolling_to_the_top_loads_older_messages_in_place(
    browser: Browser, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Scrolling up to the top fetches older messages and keeps the line read in place."""
    busy = tmp_path / "busy"
    busy.mkdir()
    rate = {"messages": 10_000, "per": 1, "burst": 10_000}
    write_config(busy, {**CONFIG, "limits": {"rate": rate}})
    server = start_server(busy)
    servers.append(server)
    # A bot says them: a page paces its messages, 120 would take half a minute.
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        bot = Peer(ws)
        await bot.hello("bob")
        await bot.join("lobby")
        for n in range(1, 121):
            await bot.send({"type": "say", "room": "lobby", "text": f"n{n}", "cid": f"{n}"})
        await bot.expect("ack", cid="120")

    alice = await ChatPage.open(browser, server.url + "/")
    try:
        await alice.sign_in("alice")
        await alice.see("n120")
        await expect(alice.messages).to_have_count(50)  # history.replay
        older = alice.page.get_by_role("button", name="Load older messages")
        await expect(older).to_be_visible()  # still there for keyboard users
        # Scrolled up to near the top (not quite: the page asks ahead), as a reader does;
        # set directly rather than by wheel, whose smooth scrolling goes on moving the
        # view after the load and would blur what is measured.
        reading = alice.message("n80")
        log = alice.page.locator("#messages")
        await log.evaluate("(log) => { log.scrollTop = 150; }")
        before = await reading.bounding_box()
        await expect(alice.messages).to_have_count(100)
        after = await reading.bounding_box()
        assert before is not None and after is not None
        # The line being read did not move (by 50 lines, or at all).
        assert abs(after["y"] - before["y"]) <= 2, (before, after)
        await expect(alice.messages.first.locator(".text")).to_have_text("n21")
        alice.assert_no_page_errors()
    finally:
        await alice.close()
