"""Log lines on standard error: `text` for people, `json` (one object a line) for pipelines.

The server installs one handler on the root logger; a reload swaps its formatter, so
every logger (the access log included) follows `log.format` at once.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

import orjson

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in line:
                line[key] = value
        # Tracebacks stay inside the object: a line is always one whole record.
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `setup` installs; `use_format` finds it by this class."""


def formatter(kind: str) -> logging.Formatter:
    """The formatter for a `log.format` value."""
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level: str, kind: str = "text") -> None:
    """Log records at `level` and above to standard error, formatted as `kind`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings would otherwise be written to stderr as bare text lines.
    logging.captureWarnings(True)


def use_format(kind: str) -> None:
    """Switch the handler `setup` installed to `kind`; nothing if `setup` was not called."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _StderrHandler):
            handler.setFormatter(formatter(kind))
