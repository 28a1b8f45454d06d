"""What every answer carries and how a request body is read: strictly, within a deadline.

- Every answer gets `Cache-Control: no-store` and `X-Content-Type-Options: nosniff` (booking
  data must not sit in shared caches, and no client may guess another media type).
- HEAD is answered wherever GET is: the request runs as a GET and the body is dropped.
- A body is read within LEDGER_HTTP_BODY_TIMEOUT seconds (408 after that), only as UTF-8 JSON
  without a Content-Encoding; a client that goes away mid-body is not a server error.
- Nothing in a /v1 request is picked silently (422 otherwise, after authentication): no query
  parameter and no header the API reads given twice, no integer parameter written other than in
  plain digits (the framework would read 1.0 and 1e0 as 1).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import ApiError, ClientGone

ANSWER_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))
# Headers a /v1 route reads a single value of (Authorization has its own rule: 401).
SINGLE_HEADERS = (b"content-type", b"last-event-id")
# Every integer parameter of the API is at least 0 and below 2**63.
_DIGITS = re.compile(r"[0-9]{1,19}")


def http_rules(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in ANSWER_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                # Content-Length stays that of the GET answer, as RFC 9110 has it for HEAD.
                message = {**message, "body": b""}
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


def check_json_body(request: Request) -> None:
    """Refuse (415) a body that is not JSON, not UTF-8 or carries a Content-Encoding."""
    content_type = ""
    encodings: list[str] = []
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-encoding":
            encodings.append(value.decode("latin-1").strip().lower())
    if any(e not in ("", "identity") for e in encodings):
        raise ApiError(415, "unsupported_media_type",
                       "Content-Encoding is not accepted: send the body as plain (identity) UTF-8 JSON")
    media_type, *parameters = content_type.split(";")
    if not _is_json(media_type.strip().lower()):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    for parameter in parameters:
        key, _, setting = parameter.partition("=")
        if key.strip().lower() == "charset" and setting.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_media_type", "JSON is read as UTF-8 only: send charset=utf-8 or none")


def _is_json(media_type: str) -> bool:
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or (subtype.endswith("+json") and len(subtype) > 5))


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, at most `limit` bytes (413), within `timeout` seconds (408).

    Raises ClientGone when the client disconnects first: nobody is left to answer, and it is
    not the server's failure.
    """
    announced = _content_length(request)
    if announced is not None and announced > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes", {"Connection": "close"})
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await request.receive()
                if message["type"] != "http.request":  # an HTTP request receives only this or http.disconnect
                    raise ClientGone("the client disconnected before its body was complete")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes", {"Connection": "close"})
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {timeout:g} s",
                       {"Connection": "close"}) from None
    return b"".join(chunks)


def _content_length(request: Request) -> float | None:
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return math.inf
    return None


def check_parameters(request: Request[Any, Any, Any]) -> None:
    """Refuse (422) a query parameter or a SINGLE_HEADERS header given more than once, and an
    integer query parameter of the route that is not plain digits."""
    query: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in query:
            raise ApiError(422, "validation_error", f"the query parameter {name[:100]!r} is given more than once")
        query[name] = value
    for single in SINGLE_HEADERS:
        if sum(1 for name, _ in request.scope["headers"] if name == single) > 1:
            raise ApiError(422, "validation_error", f"the header {single.decode()} is given more than once")
    for name in _integer_parameters(request.route_handler):
        value = query.get(name)
        if value is not None and not _DIGITS.fullmatch(value):
            raise ApiError(422, "validation_error", f"{name} must be an integer written in digits (0-9), "
                           "at most 19 of them")


_INTEGERS: dict[Callable[..., Any], frozenset[str]] = {}  # route function -> its integer query parameters


def _integer_parameters(handler: Any) -> frozenset[str]:
    """The names of a route handler's integer query parameters, read once from its signature."""
    names = _INTEGERS.get(handler.fn)
    if names is None:
        names = _INTEGERS[handler.fn] = frozenset(
            getattr(field.kwarg_definition, "query", None) or name
            for name, field in handler.parsed_fn_signature.parameters.items()
            if any(f.annotation is int for f in (field, *field.inner_types)))
    return names
