"""Helpers for the browser tests: launch Debian's Chromium, drive one chat page.

Playwright cannot download browsers here, so the tests use `/usr/bin/chromium`;
when it is missing they fail rather than skip, so a broken environment is seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp_jinja2
import jinja2
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    async_playwright,
    expect,
)

from chat.app import asset_dir
from chat.keys import CONFIG as CONFIG_KEY
from chat.routes import security_headers, setup_routes
from tests.helpers import make_config
from tests.serverproc import ServerProcess, write_config

CHROMIUM: Final = "/usr/bin/chromium"
LAUNCH_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT: Final = 5_000  # ms: the default deadline of every browser action and expectation
RECONNECT_WAIT: Final = 10_000  # ms: a page is back within this (back-off, failover)

HEARTBEAT_INTERVAL: Final = 0.3
HEARTBEAT_TIMEOUT: Final = 1.0
CONFIG: Final[dict[str, Any]] = {
    "server": {"shutdown_timeout": 2},
    "heartbeat": {"interval": HEARTBEAT_INTERVAL, "timeout": HEARTBEAT_TIMEOUT},
    "cleanup": {"interval": 0.1},
    "history": {"backend": "memory"},
}

CONNECTED: Final = re.compile(r"^connected( \(RTT \d+ ms\))?$")

# Runs before the page's own scripts (CSP does not apply to it): records every
# Content-Security-Policy violation the page causes.
_CSP_WATCH: Final = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


async def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Debian Chromium; fails the test when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium package")
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)


def start_server(tmp_path: Path, port: int = 0) -> ServerProcess:
    """A started `python -m chat` with the tiny-interval config in `tmp_path`."""
    config = tmp_path / "config.yaml"
    if not config.exists():
        write_config(tmp_path, CONFIG)
    server = ServerProcess("--config", str(config), port=port, cwd=tmp_path)
    server.start()
    return server


def exact(text: str) -> re.Pattern[str]:
    return re.compile(f"^{re.escape(text)}$")


class ChatPage:
    """One browser context with the chat page open, and what went wrong in it."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("dialog", self._on_dialog)

    @classmethod
    async def open(
        cls,
        browser: Browser,
        url: str,
        *,
        width: int = 1000,
        height: int = 700,
        color_scheme: Literal["light", "dark"] = "light",
        timezone_id: str = "UTC",
    ) -> ChatPage:
        context = await browser.new_context(
            viewport={"width": width, "height": height},
            locale="en-GB",
            timezone_id=timezone_id,
            color_scheme=color_scheme,
        )
        context.set_default_timeout(WAIT)
        await context.add_init_script(_CSP_WATCH)
        self = cls(context, await context.new_page())
        self.url = url
        self.response = await self.page.goto(url)
        return self

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error":
            self.console_errors.append(msg.text)

    async def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        # The page asks before leaving with messages pending: a test that reloads then
        # means to leave (and checks `dialogs`); dismissing would cancel the reload.
        if dialog.type == "beforeunload":
            await dialog.accept()
        else:
            await dialog.dismiss()

    # ------------------------------------------------------------------ locators

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    @property
    def messages(self) -> Locator:
        """Every message line in the room on screen."""
        return self.page.locator("#messages li.message")

    def message(self, text: str) -> Locator:
        """Message lines whose text is exactly `text`."""
        return self.messages.filter(has=self.page.locator(".text", has_text=exact(text)))

    @property
    def pending(self) -> Locator:
        return self.page.locator("#messages li.message.pending")

    @property
    def members(self) -> Locator:
        return self.page.locator("#members li")

    # ------------------------------------------------------------------ actions

    async def sign_in(self, nick: str) -> None:
        """Pick `nick` and wait until the current room is joined under it."""
        await self.page.get_by_label("Nick", exact=True).fill(nick)
        await self.page.locator("#nick-submit").click()
        await self.joined(nick)

    async def joined(self, nick: str, timeout: float = WAIT) -> None:
        """Wait until the page is connected and lists itself as a member of its room."""
        await expect(self.status).to_have_text(CONNECTED, timeout=timeout)
        await expect(self.page.locator("#members li.me")).to_have_text(nick, timeout=timeout)

    async def type_message(self, text: str) -> None:
        """Type `text` and press Enter (it may stay pending)."""
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")

    async def say(self, text: str) -> None:
        """Send `text` and wait for the server's acknowledgement."""
        await self.type_message(text)
        await expect(self.message(text)).to_have_count(1)
        await expect(self.pending).to_have_count(0)

    async def see(self, text: str, timeout: float = WAIT) -> None:
        """Wait until `text` is shown exactly once and not pending."""
        await expect(self.message(text)).to_have_count(1, timeout=timeout)
        await expect(self.message(text)).not_to_have_class(re.compile(r"\bpending\b"))

    async def csp_violations(self) -> list[str]:
        result: list[str] = await self.page.evaluate("window.__cspViolations || []")
        return result

    def assert_no_page_errors(self) -> None:
        assert self.page_errors == []
        assert self.dialogs == []

    async def close(self) -> None:
        await self.context.close()


# ---------------------------------------------------------------------- fixtures
# Each browser test module (tests/test_browser.py, tests/test_page_*.py) imports
# these functions; pytest finds them under their `name=`, so the test
# arguments do not shadow the imported names.

OpenPage = Callable[..., Awaitable[ChatPage]]


@pytest_asyncio.fixture(scope="module", loop_scope="module", name="browser")
async def browser_fixture() -> AsyncIterator[Browser]:
    """One Chromium for the module; each test gets fresh contexts."""
    async with async_playwright() as playwright:
        chromium = await launch_chromium(playwright)
        yield chromium
        await chromium.close()


@pytest.fixture(name="servers")
def servers_fixture(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Every server a test starts, killed at the end; the first one is started here."""
    started = [start_server(tmp_path)]
    yield started
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.send_signal(signal.SIGCONT)  # a stopped child still dies of SIGKILL, but be tidy
        server.close()


@pytest.fixture(name="server")
def server_fixture(servers: list[ServerProcess]) -> ServerProcess:
    return servers[0]


@pytest_asyncio.fixture(loop_scope="module", name="open_page")
async def open_page_fixture(browser: Browser, server: ServerProcess) -> AsyncIterator[OpenPage]:
    """Open the chat page (optionally at `path`) in a new browser context."""
    pages: list[ChatPage] = []

    async def _open(path: str = "/", **kwargs: Any) -> ChatPage:
        page = await ChatPage.open(browser, server.url + path, **kwargs)
        pages.append(page)
        return page

    yield _open
    for page in pages:
        await page.close()


# ---------------------------------------------------------------------- a scripted server

Frame = dict[str, Any]
Script = Callable[[Frame], Awaitable[list[Frame]]]


def welcome_for(nick: str) -> Frame:
    """A `welcome` with the contract's default limits and a 10 s heartbeat."""
    return {
        "type": "welcome", "version": 1, "session": "s-1", "nick": nick, "rooms": [],
        "heartbeat": {"interval": 10, "timeout": 30},
        "limits": {"text": 2000, "frame": 16384, "rooms": 20,
                   "rate": {"messages": 5, "per": 1, "burst": 10},
                   "join_rate": {"messages": 5, "per": 1, "burst": 40}},
    }  # fmt: skip


@contextlib.asynccontextmanager
async def scripted_page_server(answer: Script) -> AsyncIterator[str]:
    """The real page and static files, with a /ws that answers each frame with `answer`.

    For what a real server cannot be made to do on cue (messages from past days, an
    `unavailable`); `ping` is answered here. Yields the page's URL.
    """

    async def chat_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("type") == "ping":
                await ws.send_json({"type": "pong", "t": frame.get("t"), "ts": 0})
                continue
            for reply in await answer(frame):
                await ws.send_json(reply)
        return ws

    app = web.Application()
    app.on_response_prepare.append(security_headers)
    app[CONFIG_KEY] = make_config()
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(asset_dir("templates")),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    app.router.add_get("/ws", chat_ws)
    setup_routes(app, asset_dir("static"))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()
