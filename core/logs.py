"""Structured logs for every process: JSON lines in production, readable lines in `make run`.

LEDGER_LOG_FORMAT=json|console (default: console on a terminal, JSON otherwise). Library loggers
(stdlib `logging`) go through the same renderer, so a process never mixes formats.
"""

from __future__ import annotations

import logging
import os
import sys

import msgspec
import structlog


def _format() -> str:
    return os.environ.get("LEDGER_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")


def configure(level: int = logging.INFO) -> None:
    fmt = _format()
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


def direct_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger for one line per request: the same lines as configure()'s, without the stdlib
    logging machinery in between (that costs several times more than the rest of a request's log)."""
    def named(_logger: object, method: str, event: dict) -> dict:
        event["level"] = method
        event["logger"] = name
        return event

    processors: list = [named, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    if _format() == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
        output: object = structlog.PrintLogger(sys.stderr)
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=lambda value, **_: msgspec.json.encode(value)))
        output = structlog.BytesLogger(sys.stderr.buffer)
    return structlog.wrap_logger(output, processors=processors,
                                 wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
