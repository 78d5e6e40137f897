"""The page takes a reloaded heartbeat at once: Chromium against `python -m chat` and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import Browser

from tests.browser import (
    CONFIG,
    ChatPage,
    browser_fixture,  # noqa: F401 (a fixture, found by pytest under its name)
)
from tests.helpers import merge
from tests.serverproc import ServerProcess, write_config

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

SLOW: Final[dict[str, Any]] = merge(CONFIG, {"heartbeat": {"interval": 5, "timeout": 15}})
FAST: Final[dict[str, Any]] = merge(CONFIG, {"heartbeat": {"interval": 0.2, "timeout": 5}})
WAIT: Final = 10.0  # s: the most any wait here may take


async def test_page_pings_at_the_reloaded_interval(browser: Browser, tmp_path: Path) -> None:
    """After SIGHUP shortens heartbeat.interval, the open page pings at the new pace."""
    config = write_config(tmp_path, SLOW)
    server = ServerProcess("--config", str(config), cwd=tmp_path)
    server.start()
    page: ChatPage | None = None
    try:
        page = await ChatPage.open(browser, server.url + "/")
        pings: list[float] = []
        settings: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()

        def on_socket(ws: Any) -> None:
            def sent(payload: str | bytes) -> None:
                if isinstance(payload, str) and '"ping"' in payload:
                    pings.append(loop.time())

            def received(payload: str | bytes) -> None:
                if isinstance(payload, str) and payload.startswith('{"type":"settings"'):
                    settings.append(json.loads(payload))

            ws.on("framesent", sent)
            ws.on("framereceived", received)

        page.page.on("websocket", on_socket)
        await page.page.reload()
        await page.sign_in("pacer")
        write_config(tmp_path, FAST)
        server.send_signal(signal.SIGHUP)
        async with asyncio.timeout(WAIT):
            while not settings:  # noqa: ASYNC110 (frames arrive through Playwright's events)
                await asyncio.sleep(0.02)
        assert settings[0]["heartbeat"] == {"interval": 0.2, "timeout": 5}
        since = loop.time()
        # At the old 5 s interval none would come within a second; at 0.2 s, several do.
        async with asyncio.timeout(WAIT):
            while len([t for t in pings if t > since]) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert loop.time() - since < 2.5
        page.assert_no_page_errors()
    finally:
        if page is not None:
            await page.close()
        server.close()
