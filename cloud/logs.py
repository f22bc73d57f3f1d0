"""The server's log: Python ``logging`` on stderr, as text (the default) or one JSON object per line.

Library code logs to the ``privsplit.serve`` logger and configures nothing; ``privsplit serve`` calls
:func:`setup_logging` with ``--log-format`` and ``--log-level``. The choice travels to the ``--workers`` processes
in :data:`FORMAT_ENV` / :data:`LEVEL_ENV`, so every process of one server logs alike.

Text lines read as before: ``privsplit serve: listening on ...``, ``privsplit serve worker 1 (pid 123): ...``.
JSON lines carry ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, in a worker, ``worker`` and
``pid``: what a log collector (Loki, Cloud Logging, ELK) indexes without a parsing rule.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from enum import Enum

LOGGER = "privsplit.serve"
FORMAT_ENV = "PRIVSPLIT_LOG_FORMAT"
LEVEL_ENV = "PRIVSPLIT_LOG_LEVEL"
LEVELS = ("debug", "info", "warning", "error")

logger = logging.getLogger(LOGGER)


class LogFormat(str, Enum):
    TEXT = "text"
    JSON = "json"


class _Text(logging.Formatter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{self.prefix}: {level}{record.getMessage()}"


class _Json(logging.Formatter):
    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        body: dict[str, object] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            body.update(worker=self.worker, pid=os.getpid())
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup_logging(fmt: LogFormat | str | None = None, level: str | None = None, *, worker: int | None = None) -> None:
    """Send the ``privsplit.serve`` logger to stderr in ``fmt`` at ``level`` (defaults: the environment's
    :data:`FORMAT_ENV` / :data:`LEVEL_ENV`, else text and info), and pass both on to worker processes."""
    fmt = LogFormat(fmt or os.environ.get(FORMAT_ENV) or LogFormat.TEXT)
    level = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    os.environ[FORMAT_ENV], os.environ[LEVEL_ENV] = fmt.value, level
    handler = logging.StreamHandler(sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(_Json(worker))
    else:
        handler.setFormatter(
            _Text("privsplit serve" if worker is None else f"privsplit serve worker {worker} (pid {os.getpid()})")
        )
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
