"""Log formats: one JSON object per line with `log.format: json` (contract section 8)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

from chat.logs import JsonFormatter


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("chat.ws", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_ts_level_logger_message() -> None:
    """A record becomes one JSON object with ISO 8601 ts, level, logger and the message."""
    line = JsonFormatter().format(record("connection end: nick=%s", "bob"))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "chat.ws"
    assert obj["message"] == "connection end: nick=bob"
    assert datetime.fromisoformat(obj["ts"]).utcoffset() is not None


def test_json_extra_fields_are_their_own_keys() -> None:
    """Fields passed with `extra=` appear as keys, whatever their type."""
    obj = json.loads(JsonFormatter().format(
        record("end", nick=None, remote="::1", code=4000, reason="x", duration=1.5, obj=object())
    ))
    assert (obj["nick"], obj["remote"], obj["code"], obj["reason"], obj["duration"]) == (
        None, "::1", 4000, "x", 1.5
    )
    assert obj["obj"].startswith("<object")


def test_json_traceback_stays_on_one_line() -> None:
    """An exception's traceback is a string field, not extra lines."""
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord(
            "chat", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc_info"]
