"""Structured logs for every process: JSON lines in production, readable lines in `make run`.

LEDGER_LOG_FORMAT=json|console (default: console on a terminal, JSON otherwise). Library loggers
(stdlib `logging`) go through the same renderer, so a process never mixes formats.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: int = logging.INFO) -> None:
    fmt = os.environ.get("LEDGER_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        rendering = [structlog.dev.ConsoleRenderer(colors=False)]
    else:
        rendering = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
