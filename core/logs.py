"""Structured logs for every process: JSON lines in production, readable lines in `make run`.

LEDGER_LOG_FORMAT=json|console (default: console on a terminal, JSON otherwise). Library loggers
(stdlib `logging`) go through the same renderer, so a process never mixes formats.

Two promises hold for every record, whichever logger made it:
- It reaches stderr in one write(2), its newline included. The API's worker processes share one
  pipe; a record written in pieces (the line, then its newline) would merge with another
  worker's. One write of at most PIPE_BUF bytes (4096 on Linux) is never interleaved.
- In the console format nothing reaches the terminal raw that is not printable: control
  characters (ESC, NUL, DEL, ...), line breaks and bidi overrides in any key or value are shown
  as escapes (`\\x1b`, `\\n`, `\\u202e`), so a request path cannot drive the operator's terminal
  or fake a log line. A traceback keeps its line breaks. JSON escapes control characters itself.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import msgspec
import structlog

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _format() -> str:
    return os.environ.get("LEDGER_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")


def escape_non_printable(text: str, keep: str = "") -> str:
    """`text` with every character that str.isprintable() refuses (except those in `keep`) written
    as a Python escape: control characters, DEL, line and paragraph separators, bidi controls."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class _PrintableConsoleRenderer:
    """structlog's ConsoleRenderer, with nothing unprintable left in what it writes.

    It prints a value as its repr (which escapes) when the value holds a space, quote, '=' or line
    break, and as it is otherwise; the message and the keys always as they are. So: the message and
    keys are escaped before rendering (line breaks included), and the rendered record after it,
    keeping only the line breaks a traceback or stack is made of.
    """

    def __init__(self) -> None:
        # A plain traceback: structlog's default (rich, when installed) prints every frame's locals,
        # which may hold an API key.
        self._render = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)

    def __call__(self, logger: object, method: str, event: MutableMapping[str, Any]) -> str:
        escaped = {}
        for key, value in event.items():
            is_message = key == "event" and isinstance(value, str)
            escaped[escape_non_printable(str(key))] = escape_non_printable(value) if is_message else value
        return escape_non_printable(self._render(logger, method, escaped), keep="\n")


class RecordWriter:
    """Writes one record and its newline with one write(2) on a stream's file descriptor.

    A stream without one (a test's capture) gets one write() call and a flush instead.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None

    def write(self, record: str | bytes) -> None:
        data = (record.encode("utf-8", "backslashreplace") if isinstance(record, str) else record) + b"\n"
        with self._lock:
            if self._fd is None:
                self._stream.write(data.decode("utf-8", "replace"))
                self._stream.flush()
                return
            view = memoryview(data)
            while view:  # a pipe takes it whole unless a signal interrupts the write
                view = view[os.write(self._fd, view):]


class _RecordLogger:
    """structlog's output object over a RecordWriter."""

    def __init__(self, writer: RecordWriter) -> None:
        self._writer = writer

    def msg(self, message: str | bytes) -> None:
        self._writer.write(message)

    log = debug = info = warn = warning = error = critical = exception = msg


class _RecordHandler(logging.Handler):
    """The stdlib handler: each formatted record in one write."""

    def __init__(self, writer: RecordWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write(self.format(record))
        except Exception:
            self.handleError(record)


_writers: dict[int, RecordWriter] = {}


def _writer(stream: TextIO) -> RecordWriter:
    """One writer (and lock) per stream, shared by the stdlib handler and the direct loggers."""
    if id(stream) not in _writers:
        _writers[id(stream)] = RecordWriter(stream)
    return _writers[id(stream)]


def configure(level: int = logging.INFO) -> None:
    fmt = _format()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering: list[structlog.typing.Processor]
    if fmt == "console":
        rendering = [_PrintableConsoleRenderer()]
    else:
        rendering = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _RecordHandler(_writer(sys.stderr))
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
        processors.append(_PrintableConsoleRenderer())
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=lambda value, **_: msgspec.json.encode(value)))
    return structlog.wrap_logger(_RecordLogger(_writer(sys.stderr)), processors=processors,
                                 wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
