"""What a client is told about the server's settings: `welcome`'s and `settings`' fields.

One builder for both frames, so a reload compares and sends exactly what `welcome`
would say to a client connecting now.
"""

from __future__ import annotations

from typing import Any

from chat.config import Config, RateConfig


def _rate(rate: RateConfig) -> dict[str, Any]:
    return {"messages": rate.messages, "per": rate.per, "burst": rate.burst}


def settings_fields(config: Config, frame_ceiling: int | None = None) -> dict[str, Any]:
    """The `heartbeat` and `limits` fields of `welcome` and `settings`.

    `frame_ceiling` is the largest message the connection's reader can take (fixed at
    its upgrade, see chat.ws): a client is told the limit that really holds for it.
    """
    limits = config.limits
    frame = limits.max_frame if frame_ceiling is None else min(limits.max_frame, frame_ceiling)
    return {
        "heartbeat": {
            "interval": config.heartbeat.interval,
            "timeout": config.heartbeat.timeout,
        },
        "limits": {
            "text": limits.max_text,
            "frame": frame,
            "rooms": limits.max_rooms,
            "rate": _rate(limits.rate),
            "join_rate": _rate(limits.join_rate),
        },
    }
