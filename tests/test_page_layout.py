"""The page's layout and accessibility in headless Chromium: phones, focus rings, keys."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, Literal

import pytest
from playwright.async_api import Browser, expect

from tests.browser import (
    ChatPage,
    OpenPage,
    browser_fixture,  # noqa: F401 (fixtures, found by pytest under their names)
    open_page_fixture,  # noqa: F401
    scripted_page_server,
    server_fixture,  # noqa: F401
    servers_fixture,  # noqa: F401
    welcome_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PHONE: Final = {"width": 375, "height": 667}


async def test_on_a_phone_the_log_gets_the_screen_and_rooms_fold_away(open_page: OpenPage) -> None:
    """At 375 px the rooms and members fold into a panel; the log takes most of the height."""
    alice, bob = await asyncio.gather(open_page(**PHONE), open_page())
    await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
    page = alice.page
    toggle = page.locator("#panel-toggle")
    await expect(toggle).to_be_visible()
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(page.locator("#sidebar")).to_be_hidden()
    log = await page.locator("#messages").bounding_box()
    assert log is not None and log["height"] >= 0.4 * PHONE["height"], log
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(page.locator("#members li")).to_have_text(["alice", "bob"])
    await page.get_by_label("Join room").fill("dev")
    await page.get_by_label("Join room").press("Enter")
    await expect(page.locator("#sidebar")).to_be_hidden()  # back to the log
    await expect(page.locator("#room-title")).to_have_text("#dev")

    await bob.say("in the lobby")  # unread elsewhere: the folded toggle says so
    await expect(toggle).to_have_accessible_name("Rooms, 1 unread")
    await toggle.click()
    await page.locator("#rooms .room-switch", has_text="#lobby").click()
    await expect(page.locator("#sidebar")).to_be_hidden()
    await alice.see("in the lobby")
    await expect(toggle).to_have_accessible_name("Rooms")
    alice.assert_no_page_errors()


# WCAG 2 contrast of two sRGB colours given as "rgb(r, g, b)" strings, in the page.
_FOCUS_CONTRAST: Final = """
() => {
  const rgb = (s) => s.match(/[\\d.]+/g).slice(0, 4).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const el = document.activeElement;
  const style = getComputedStyle(el);
  // The ring is drawn outside the element (outline-offset): on its parents' background.
  let bg = null;
  for (let node = el.parentElement; node && !bg; node = node.parentElement) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length < 4 || c[3] > 0) bg = c;
  }
  bg = bg || [255, 255, 255];
  const [a, b] = [lum(rgb(style.outlineColor)), lum(bg)];
  return {
    id: el.id || `${el.tagName}.${el.className}`,
    style: style.outlineStyle,
    width: parseFloat(style.outlineWidth),
    ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05),
  };
}
"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_the_focus_ring_has_three_to_one_contrast(
    open_page: OpenPage, scheme: Literal["light", "dark"]
) -> None:
    """Every control reached with Tab shows a ring of at least 3:1 against its background."""
    alice = await open_page(color_scheme=scheme)
    await alice.sign_in("alice")
    await alice.say("see https://example.com/")
    page = alice.page
    await page.locator("body").click(position={"x": 1, "y": 1})
    seen: dict[str, float] = {}
    for _ in range(25):
        await page.keyboard.press("Tab")
        ring = await page.evaluate(_FOCUS_CONTRAST)
        if ring["id"] == "BODY.":  # past the last control, before Tab wraps around
            continue
        assert ring["style"] != "none" and ring["width"] >= 2, ring
        seen[ring["id"]] = ring["ratio"]
    assert {"nick", "text", "room-name", "BUTTON.room-switch", "A."} <= seen.keys(), seen
    low = {name: ratio for name, ratio in seen.items() if ratio < 3}
    assert low == {}, seen
    alice.assert_no_page_errors()


async def test_join_and_leave_are_quiet_log_lines_and_alt_arrows_switch_rooms(
    open_page: OpenPage,
) -> None:
    """Presence shows as one quiet log line; Alt+Up/Down switch rooms, as the page says."""
    alice, bob = await asyncio.gather(open_page(), open_page())
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    page = alice.page
    quiet = page.locator("#messages li.presence")
    await expect(quiet).to_have_text(["bob joined"])
    await bob.page.get_by_role("button", name="Leave #lobby").click()
    await expect(quiet).to_have_text(["bob joined", "bob left"])
    await expect(page.locator("#messages")).to_have_attribute("role", "log")

    await expect(page.locator("#rooms-hint")).to_have_text("Alt+↑ and Alt+↓ switch rooms.")
    for name in ("dev", "ops"):
        await page.get_by_label("Join room").fill(name)
        await page.get_by_label("Join room").press("Enter")
    await expect(page.locator("#room-title")).to_have_text("#ops")
    await expect(page.locator("#text")).to_be_focused()
    for key, room in (("Alt+ArrowUp", "#dev"), ("Alt+ArrowUp", "#lobby"), ("Alt+ArrowUp", "#ops"),
                      ("Alt+ArrowDown", "#lobby")):  # fmt: skip
        await page.keyboard.press(key)
        await expect(page.locator("#room-title")).to_have_text(room)
    await expect(page.locator("#text")).to_be_focused()
    alice.assert_no_page_errors()


async def test_a_room_keeps_at_most_200_join_and_leave_lines(browser: Browser) -> None:
    """Much coming and going: the oldest presence lines go past 200, messages stay."""

    async def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        if frame["type"] == "hello":
            return [welcome_for(frame["nick"])]
        if frame["type"] == "join":
            said = {"type": "message", "room": "lobby", "id": 1, "nick": "bob", "text": "hi",
                    "ts": int(time.time() * 1000), "cid": None}  # fmt: skip
            joined = {"type": "joined", "room": "lobby", "epoch": "e1", "members": ["alice"],
                      "messages": [said], "complete": True}  # fmt: skip
            churn = [
                {"type": "presence", "room": "lobby", "event": event, "nick": f"u{n}",
                 **({"reason": "left"} if event == "leave" else {})}
                for n in range(150)
                for event in ("join", "leave")
            ]  # fmt: skip
            return [joined, *churn]
        return []

    async with scripted_page_server(answer) as url:
        alice = await ChatPage.open(browser, url)
        try:
            await alice.sign_in("alice")
            quiet = alice.page.locator("#messages li.presence")
            await expect(quiet.last).to_have_text("u149 left")
            await expect(quiet).to_have_count(200)
            await expect(quiet.first).to_have_text("u50 joined")
            await alice.see("hi")
            alice.assert_no_page_errors()
        finally:
            await alice.close()
