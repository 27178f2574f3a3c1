"""Logs a person and a machine can follow: ``server.log_format: text`` (one readable line per
record) or ``json`` (one JSON object per line), for the relay's own records, uvicorn's, and the
access line every request leaves (``relay.access``: method, path, status, bytes, milliseconds,
where its data came from, and its request id — the id a chain of relays passes along, so one
request can be followed through every hop's log).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

__all__ = ["ACCESS", "LogFormat", "configure"]

LogFormat = Literal["text", "json"]

#: the access log: one INFO record per request, its fields in ``record.fields``
ACCESS = logging.getLogger("relay.access")

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, log_format: LogFormat = "text") -> None:
    """One handler on the root logger, to stderr, in ``log_format``; uvicorn's loggers
    propagate to it (``relay serve`` gives uvicorn no logging config of its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if log_format == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
