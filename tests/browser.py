"""Helpers for the browser tests: launch Debian's Chromium, drive one chat page.

Playwright cannot download browsers here, so the tests use `/usr/bin/chromium`;
when it is missing they fail rather than skip, so a broken environment is seen.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final, Literal

import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page, Playwright, expect

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
    ) -> ChatPage:
        context = await browser.new_context(
            viewport={"width": width, "height": height},
            locale="en-GB",
            timezone_id="UTC",
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
