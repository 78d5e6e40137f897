"""The page mounted under a path prefix (`/chat/`), in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Response

from chat.app import create_app
from tests.browser import (
    ChatPage,
    browser_fixture,  # noqa: F401 (fixtures, found by pytest under their names)
    start_server,
)
from tests.helpers import make_config
from tests.nginxproc import Nginx

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module")
async def prefixed() -> AsyncIterator[str]:
    """The whole app as a sub-application at /chat/ of an otherwise empty one; its base URL.

    aiohttp runs a sub-application's startup, cleanup_ctx and shutdown with the parent's,
    so the hub, the history and the heartbeat's cleanup run as they do at the root.
    """
    config = make_config({"history": {"backend": "memory"}})
    # /chat (no slash) matches nothing of the sub-application: the parent redirects it,
    # as docs/client-page.md tells.
    root = web.Application(middlewares=[web.normalize_path_middleware()])
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
        # Without its slash the address is redirected to the page's.
        await alice.page.goto(f"{prefixed}/chat")
        assert alice.page.url.split("#")[0] == f"{prefixed}/chat/"
        await alice.joined("alice")
    finally:
        await alice.close()
        await bob.close()


async def test_the_page_works_behind_nginx_under_a_prefix(
    browser: Browser, tmp_path: Path
) -> None:
    """docs/client-page.md's nginx `location /chat/`: files, socket and redirect all work."""
    server = start_server(tmp_path)  # started already: closed below, not entered
    with contextlib.closing(server), Nginx(
        tmp_path / "nginx", [server.port], prefix="/chat/"
    ) as nginx:
        base = f"{nginx.url}/chat/"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{nginx.url}/chat", allow_redirects=False) as bare:
                assert bare.status == 301
                assert bare.headers["Location"] == base
        failed: list[str] = []

        def record(response: Response) -> None:
            if response.status >= 400:
                failed.append(f"{response.status} {response.url}")

        alice = await ChatPage.open(browser, f"{nginx.url}/chat")  # redirected
        bob = await ChatPage.open(browser, base)
        sockets: list[str] = []
        alice.page.on("response", record)
        alice.page.on("websocket", lambda ws: sockets.append(ws.url))
        try:
            await alice.page.reload()  # every response of a whole load, recorded
            assert alice.page.url.split("#")[0] == base
            await asyncio.gather(alice.sign_in("alice"), bob.sign_in("bob"))
            await alice.say("hello through the proxy")
            await bob.see("hello through the proxy")
            await bob.say("and back")
            await alice.see("and back")
            assert failed == []
            assert sockets == [f"ws://127.0.0.1:{nginx.port}/chat/ws"]
            for page in (alice, bob):
                assert await page.csp_violations() == []
                page.assert_no_page_errors()
        finally:
            await alice.close()
            await bob.close()
