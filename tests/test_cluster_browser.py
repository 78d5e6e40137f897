"""The chat page in headless Chromium, served through nginx by two nodes on one Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright, expect

from tests.browser import RECONNECT_WAIT, WAIT, ChatPage, launch_chromium
from tests.nginxproc import Deployment, landed, open_on

pytestmark = pytest.mark.browser

@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await launch_chromium(playwright)
        yield chromium
        await chromium.close()


async def open_with_clock(browser: Browser, url: str) -> ChatPage:
    """The chat page at `url`, with Playwright's clock installed before its scripts run.

    The clock runs in real time until the test pauses it; while paused, the page's
    timers (its reconnect back-off among them) wait, and its network events do not.
    """
    context = await browser.new_context(
        viewport={"width": 1000, "height": 700}, locale="en-GB", timezone_id="UTC"
    )
    context.set_default_timeout(WAIT)
    page = await context.new_page()
    await page.clock.install()
    chat = ChatPage(context, page)  # listens for errors from the first script on
    response = await page.goto(url)
    assert response is not None and response.status == 200
    return chat


async def test_message_typed_while_reconnecting_after_a_node_kill_arrives_once(
    deployment: Deployment, browser: Browser
) -> None:
    """Its node killed, the page resumes via nginx; a message typed meanwhile arrives once."""
    async with aiohttp.ClientSession() as http:
        before = await deployment.connections(http)
        alice = await open_with_clock(browser, deployment.proxy.url + "/")
        try:
            await alice.sign_in("alice")
            doomed = await landed(deployment, http, before)
            bob = await open_on(deployment, http, 1 - doomed, "bob")
            try:
                await bob.peer.send({"type": "join", "room": "lobby"})
                await bob.wait("joined", room="lobby")
                await expect(alice.members).to_have_text(["alice", "bob"])
                await alice.say("before the kill")
                await bob.wait("message", id=1)

                # The page's timers stop, so its reconnect waits until the test says.
                now = await alice.page.evaluate("Date.now()")
                await alice.page.clock.pause_at(now + 50)
                deployment.nodes[doomed].kill()
                await expect(alice.status).to_contain_text("reconnecting")
                await alice.type_message("typed while reconnecting")
                await expect(alice.pending).to_have_count(1)
                await expect(alice.pending).to_contain_text("typed while reconnecting")
                await alice.page.clock.resume()

                await alice.joined("alice", timeout=RECONNECT_WAIT)
                await alice.see("typed while reconnecting", timeout=RECONNECT_WAIT)
                await expect(alice.pending).to_have_count(0)
                await bob.wait("message", id=2)
                # Anything sent twice would have arrived before a later message.
                await bob.peer.send(
                    {"type": "say", "room": "lobby", "text": "after the kill", "cid": "b3"}
                )
                await bob.wait("message", id=3)
                await alice.see("after the kill")
                assert [(m["id"], m["nick"], m["text"]) for m in bob.of("message")] == [
                    (1, "alice", "before the kill"),
                    (2, "alice", "typed while reconnecting"),
                    (3, "bob", "after the kill"),
                ]
                await expect(alice.page.locator("#messages li.message .text")).to_have_text(
                    ["before the kill", "typed while reconnecting", "after the kill"]
                )
                # One epoch throughout: no "history over" divider.
                await expect(
                    alice.page.locator("#messages li", has_text="history over")
                ).to_have_count(0)
                alice.assert_no_page_errors()
            finally:
                await bob.close()
        finally:
            await alice.close()
