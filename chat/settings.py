"""What a client is told about the server's settings: `welcome`'s and `settings`' fields.

One builder for both frames, so a reload compares and sends exactly what `welcome`
would say to a client connecting now.
"""

from __future__ import annotations

from typing import Any

from chat.config import Config, RateConfig


def _rate(rate: RateConfig) -> dict[str, Any]:
    return {"messages": rate.messages, "per": rate.per, "burst": rate.burst}


def settings_fields(config: Config) -> dict[str, Any]:
    """The `heartbeat` and `limits` fields of `welcome` and `settings`."""
    limits = config.limits
    return {
        "heartbeat": {
            "interval": config.heartbeat.interval,
            "timeout": config.heartbeat.timeout,
        },
        "limits": {
            "text": limits.max_text,
            "frame": limits.max_frame,
            "rooms": limits.max_rooms,
            "rate": _rate(limits.rate),
            "join_rate": _rate(limits.join_rate),
        },
    }
