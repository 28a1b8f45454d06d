"""Bearer-key authentication, scopes and the per-key rate limit."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from service.api import metrics
from service.api.http_rules import check_parameters
from service.api.problems import ApiError
from service.api.state import app_state_of
from service.ledger.db import request_deadline
from service.ledger.keys import ApiKey, authenticate


def header(request: ASGIConnection[Any, Any, Any, Any], name: bytes) -> str:
    """One request header (`name` in lower case), read straight from the ASGI scope.

    Cheaper than request.headers, which decodes every header of the request on each access."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


READ_SCOPES = ("read",)
WRITE_SCOPES = ("write", "write:any")
ERASE_SCOPES = ("erase",)


async def authenticated(request: Request[Any, Any, Any]) -> None:
    """The before-request hook of every /v1 route: authentication comes before any other check.

    It runs before the framework validates path and query parameters, so a request without a
    valid key gets 401 whatever else is wrong with it; then come the rules every /v1 request
    keeps (http_rules.check_parameters). (A hook, not a guard: Litestar copies the route handler
    for every guard call, a cost on every request.) The route's scopes come from its `opt`; the
    key is left in `request.state.api_key`, and the request's deadline (taken first, so that the
    key's look-up counts against it) in `request.state.deadline` (`deadline_of`).
    """
    handler = request.route_handler
    request.scope["state"]["deadline"] = request_deadline(app_state_of(request).pool)
    try:
        key = await require_key(request, handler.opt["scopes"])
        check_parameters(request)
    except ApiError as error:
        if route := handler.opt.get("read_route"):
            metrics.READS.labels(route, error.code).inc()
        raise
    request.scope["state"]["api_key"] = key  # request.state, without building a State object


async def require_key(request: ASGIConnection[Any, Any, Any, Any], scopes: tuple[str, ...]) -> ApiKey:
    """The request's active API key holding one of `scopes`, or an ApiError (401, 403 or 429)."""
    if sum(1 for name, _ in request.scope["headers"] if name == b"authorization") > 1:
        raise ApiError(401, "unauthorized", "send exactly one Authorization header", _CHALLENGE)
    scheme, _, presented = header(request, b"authorization").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'", _CHALLENGE)
    state = app_state_of(request)
    key = await authenticate(state.pool, presented, state.key_cache, deadline_of(request))
    if key is None:
        raise ApiError(401, "unauthorized", "the API key is unknown or revoked", _CHALLENGE)
    wait = state.rate_limiter.retry_after(key.id)
    if wait is not None:
        raise ApiError(429, "rate_limited", "this key is over its request rate", {"Retry-After": str(wait)})
    # For the request log line, never the key itself (request.state, without building a State object).
    request.scope.setdefault("state", {})["department"] = key.department
    if not any(key.allows(scope) for scope in scopes):
        raise ApiError(403, "forbidden", f"this key has none of the scopes {', '.join(scopes)}")
    return key


def deadline_of(request: ASGIConnection[Any, Any, Any, Any]) -> float | None:
    """The request's deadline (service.ledger.db.request_deadline), taken when it arrived: what it
    asks of Postgres, its key's look-up included, ends by then, so it is answered within one budget."""
    return request.scope.get("state", {}).get("deadline")


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
