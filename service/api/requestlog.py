"""One log line per request, with a request id that is also returned in X-Request-ID.

The line carries the method, path (its first MAX_LOGGED_PATH characters), status, duration, the
department of the key (never the key) and the problem code of an error answer. A /v1 request also
carries its trace id: from its W3C `traceparent` header, or a new trace when the header is absent
or malformed (never an error). Its context is in the request's state (`trace`) for the routes, and
the request is a span when spans are exported (core/tracing.py).
"""

from __future__ import annotations

import os
import re
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from core import tracing
from core.logs import direct_logger

HEADER = b"x-request-id"
TRACEPARENT = tracing.HEADER.encode()
# A path is logged up to this many characters (then "…"), so that a line stays well under the
# 4096 bytes that one write(2) to a pipe keeps whole, even with every character escaped.
MAX_LOGGED_PATH = 300
_VALID_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")  # fullmatch: no final newline


def request_log(app: ASGIApp) -> ASGIApp:
    log = direct_logger("booking_ledger.request")

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(HEADER, b"")
        request_id = given.decode() if _VALID_ID.fullmatch(given) else os.urandom(16).hex()
        state = scope.setdefault("state", {})  # what request.state reads and writes
        state["request_id"] = request_id
        span = None
        if scope["path"].startswith("/v1/"):
            name = f"{scope['method']} {scope.get('path_template', '/v1')}"  # the route, not the booking code
            span = tracing.span(name, tracing.parse(headers.get(TRACEPARENT)), "server")
            state["trace"] = span.context
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            if span is not None:
                span.end(status=status, path=_logged_path(scope["path"]))
            log.info(
                "request",
                request_id=request_id,
                trace_id=span.context.trace_id if span is not None else None,
                method=scope["method"],
                path=_logged_path(scope["path"]),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                department=state.get("department"),
                code=state.get("problem_code"),
            )

    return middleware


def _logged_path(path: str) -> str:
    return path if len(path) <= MAX_LOGGED_PATH else path[:MAX_LOGGED_PATH] + "…"
