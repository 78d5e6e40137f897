"""Prometheus metrics, one registry per application (tests run many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "chat_connections", "Open WebSocket connections.", registry=self.registry
        )
        self.sessions = Gauge(
            "chat_sessions", "Sessions that said hello and are connected.", registry=self.registry
        )
        # prometheus-client adds the _total suffix to counters.
        self.messages = Counter("chat_messages", "Messages stored.", registry=self.registry)
        self.heartbeat_timeouts = Counter(
            "chat_heartbeat_timeouts",
            "Connections closed with 4000 (heartbeat timeout).",
            registry=self.registry,
        )
        self.closes = Counter(
            "chat_connections_closed",
            "Connections ended, by close code.",
            ["code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "chat_errors", "Error frames sent, by code.", ["code"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
