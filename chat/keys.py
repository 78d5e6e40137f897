"""Every piece of application state, under one typed key each (no module globals)."""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from chat.config import Config
from chat.connection import Connection, Flusher
from chat.history import HistoryStore
from chat.hub import Hub
from chat.metrics import Metrics
from chat.policy import Network

CONFIG: Final = web.AppKey("config", Config)
HUB: Final = web.AppKey("hub", Hub[Connection])
# Writes every connection's outbox once per event-loop iteration.
FLUSHER: Final = web.AppKey("flusher", Flusher)
HISTORY: Final = web.AppKey("history", HistoryStore)
METRICS: Final = web.AppKey("metrics", Metrics)
# Parsed security.trusted_proxies, so no request parses them again.
PROXIES: Final = web.AppKey("proxies", tuple[Network, ...])
# Set by every applied reload: the cleanup coroutine wakes to take the new intervals.
RECONFIGURED: Final = web.AppKey("reconfigured", asyncio.Event)
