"""The page mounted under a path prefix (`/chat/`), in headless Chromium."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser

from chat.app import create_app
from tests.browser import (
    ChatPage,
    browser_fixture,  # noqa: F401 (fixtures, found by pytest under their names)
)
from tests.conftest import make_config

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module")
async def prefixed() -> AsyncIterator[str]:
    """The whole app as a sub-application at /chat/ of an otherwise empty one; its base URL.

    aiohttp runs a sub-application's startup, cleanup_ctx and shutdown with the parent's,
    so the hub, the history and the heartbeat's cleanup run as they do at the root.
    """
    config = make_config({"history": {"backend": "memory"}})
    root = web.Application()
    root.add_subapp("/chat/", create_app(config))
    runner = web.AppRunner(root)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_the_page_works_under_a_path_prefix(browser: Browser, prefixed: str) -> None:
    """Served at /chat/, the page loads its files, socket and healthz from under /chat/."""
    requests: list[str] = []
    alice = await ChatPage.open(browser, f"{prefixed}/chat/")
    bob = await ChatPage.open(browser, f"{prefixed}/chat/#room=lobby")
    sockets: list[str] = []
    alice.page.on("request", lambda r: requests.append(r.url))
    alice.page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        await alice.page.reload()  # every request of a whole load, recorded
        await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
        await alice.say("hello under a prefix")
        await bob.see("hello under a prefix")
        status = await alice.page.evaluate(
            "fetch(new URL('healthz', location.href)).then((r) => r.status)"
        )
        assert status == 200
        assert requests, "nothing recorded"
        outside = [url for url in requests if not url.startswith(f"{prefixed}/chat/")]
        assert outside == []
        assert f"{prefixed}/chat/static/chat.js?v=" in " ".join(requests)
        assert sockets == [f"ws://{prefixed.removeprefix('http://')}/chat/ws"]
        href = await alice.page.locator("link[rel=stylesheet]").get_attribute("href")
        assert href is not None and href.startswith("static/chat.css?v="), href
        for page in (alice, bob):
            assert await page.csp_violations() == []
            page.assert_no_page_errors()
    finally:
        await alice.close()
        await bob.close()
