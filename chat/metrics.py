"""Prometheus metrics, one registry per application (tests run many apps in one process)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from chat.protocol import Close

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Close codes are counted and logged under a bounded set of labels: a client may close
# with any code from 1000 to 4999. The server's own codes keep their label (1002 is the
# WebSocket protocol's error, 1006 an end with no close frame); of the codes a client
# chooses, only the ones browsers send do. Everything else is "other".
NO_CLOSE_FRAME: Final = 1006
SERVER_CLOSE_CODES: Final = frozenset({*map(int, Close), NO_CLOSE_FRAME})
CLIENT_CLOSE_CODES: Final = frozenset({Close.NORMAL, Close.GOING_AWAY, NO_CLOSE_FRAME})


def close_label(code: int | None, *, by_client: bool = False) -> str:
    """The bounded label for a close code (None: the connection ended with no close frame)."""
    if code is None:
        code = NO_CLOSE_FRAME
    known = CLIENT_CLOSE_CODES if by_client else SERVER_CLOSE_CODES
    return str(code) if code in known else "other"


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
        # The stores' commits (SQLite's group commits, Redis's rounds of says; the memory
        # store has none): how long storing takes, and how many says each commit carries
        # (under load, many; a slow disk or a busy Redis shows here first).
        self.commit_seconds = Histogram(
            "chat_history_commit_seconds",
            "Time to store one batch of says: a SQLite group commit or a Redis round.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.commit_messages = Histogram(
            "chat_history_commit_messages",
            "Says stored by one commit (SQLite or Redis round), re-sent ones included.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.registry,
        )
        # One pass of the cleanup coroutine over every connection (heartbeat.reap):
        # the buckets resolve 1-20 ms, where 10,000 connections should stay.
        self.cleanup_sweep_seconds = Histogram(
            "chat_cleanup_sweep_seconds",
            "Time one pass of the cleanup coroutine takes (sorting the connections, "
            "closing the dead, pinging the quiet).",
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
                     0.05, 0.1, 0.5),
            registry=self.registry,
        )

        # The Redis backend (history.backend: redis); stays 0 on the other backends.
        self.redis_up = Gauge(
            "chat_redis_up", "1 while this node reaches Redis.", registry=self.registry
        )
        self.redis_reconnects = Counter(
            "chat_redis_reconnects",
            "Times this node reached Redis again after losing it.",
            registry=self.registry,
        )
        self.redis_gaps = Counter(
            "chat_redis_gaps",
            "Times a room's feed was found behind the stream (a lost pub/sub message, "
            "a reconnect, a failed probe).",
            registry=self.registry,
        )
        self.redis_backfilled = Counter(
            "chat_redis_backfilled",
            "Messages read from a room's stream to fill a gap in its feed.",
            registry=self.registry,
        )
        self.redis_nodes_reaped = Counter(
            "chat_redis_nodes_reaped",
            "Nodes whose lease ran out and whose sessions this node ended.",
            registry=self.registry,
        )

    def observe_commit(self, messages: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_messages.observe(messages)

    def render(self) -> bytes:
        return generate_latest(self.registry)
