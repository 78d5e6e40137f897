"""Prometheus metrics, one registry per application (tests run many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        # The SQLite store's group commits: how long the disk takes, and how many
        # messages each commit carries (under load, many; a slow disk shows here first).
        self.commit_seconds = Histogram(
            "chat_history_commit_seconds",
            "Time to store and commit one batch of messages (SQLite).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.commit_messages = Histogram(
            "chat_history_commit_messages",
            "Says answered by one commit (SQLite group commit), re-sent ones included.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.registry,
        )

    def observe_commit(self, messages: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_messages.observe(messages)

    def render(self) -> bytes:
        return generate_latest(self.registry)
