"""One log line per request, with a request id that is also returned in X-Request-ID.

The line carries the method, path (its first MAX_LOGGED_PATH characters), status, duration, the
department of the key (never the key) and the problem code of an error answer.
"""

from __future__ import annotations

import os
import re
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from core.logs import direct_logger

HEADER = b"x-request-id"
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
        given = dict(scope["headers"]).get(HEADER, b"")
        request_id = given.decode() if _VALID_ID.fullmatch(given) else os.urandom(16).hex()
        state = scope.setdefault("state", {})  # what request.state reads and writes
        state["request_id"] = request_id
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
            log.info(
                "request",
                request_id=request_id,
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
