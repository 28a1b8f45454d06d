"""Every error answer is application/problem+json (RFC 9457), mapped here and nowhere else."""

from __future__ import annotations

import logging
from http import HTTPStatus

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from service.api.schemas import Problem
from service.ledger import errors

log = logging.getLogger("booking_ledger.api")

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 1

_LEDGER_STATUS: dict[type[errors.LedgerError], int] = {
    errors.BookingCodeTaken: 409,
    errors.VersionConflict: 409,
    errors.EventIdConflict: 409,
    errors.NotOwner: 403,
    errors.PersonalDataErased: 409,
    errors.BookingNotFound: 404,
    errors.SubscriptionNotFound: 404,
    errors.SubscriptionNotPaused: 409,
    errors.SubscriptionLimit: 409,
    errors.WebhookUrlRefused: 422,
    errors.InvalidData: 422,
    errors.StoreUnavailable: 503,
    errors.OutcomeUnknown: 503,
}

# Codes for errors the framework raises (routing, body size, ...).
_HTTP_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the API layer itself decides on (auth, scopes, rate, media type, validation)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed the connection before its request body was complete: not a server error."""

    code = "client_disconnected"


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, request: Request | None = None,
    **extra: object,
) -> Response[bytes]:
    if request is not None:
        request.state.problem_code = code  # for the request log line
    body = Problem(
        type=f"urn:booking-ledger:problem:{code}",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        code=code,
        **extra,  # type: ignore[arg-type]
    )
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _ledger_error(request: Request, exc: errors.LedgerError) -> Response[bytes]:
    status = _LEDGER_STATUS.get(type(exc), 500)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    if status == 503:
        log.warning("store unavailable: %s (%r)", exc.detail, exc.__cause__)
    extra = {k: v for k, v in exc.context.items() if k in Problem.__struct_fields__}
    if "event_ids" in extra:
        extra["event_ids"] = [str(i) for i in extra["event_ids"]]
    return problem(status, exc.code, exc.detail, headers, request, **extra)


def _api_error(request: Request, exc: ApiError) -> Response[bytes]:
    return problem(exc.status, exc.code, exc.detail, exc.headers, request)


def _client_gone(request: Request, exc: ClientGone) -> Response[bytes]:
    # Nobody reads this answer; it is what the request log line and the metrics record.
    return problem(400, exc.code, str(exc), {"Connection": "close"}, request)


def _validation_error(request: Request, exc: msgspec.ValidationError | msgspec.DecodeError) -> Response[bytes]:
    prefix = "invalid request" if isinstance(exc, msgspec.ValidationError) else "body is not valid JSON"
    return problem(422, "validation_error", f"{prefix}: {exc}", request=request)


def _http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    if status == 400:
        status = 422  # the framework's parameter validation: the contract answers 422
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else HTTPStatus(status).phrase
    extra = getattr(exc, "extra", None)
    if status == 422 and isinstance(extra, list) and extra:
        detail = f"{detail}: " + "; ".join(
            f"{e.get('key', '?')}: {e.get('message', '')}" for e in extra if isinstance(e, dict)
        )
    headers = dict(exc.headers or {})
    if status == 413:
        # Answered before the body was read: the rest of it is still on the wire, so this
        # connection cannot carry another request. Say so, and clients open a new one.
        headers["Connection"] = "close"
    if status == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return problem(status, code, detail, headers, request)


def _unexpected(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal_error", "the server failed to answer this request; it has been logged",
                   request=request)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    errors.LedgerError: _ledger_error,
    ApiError: _api_error,
    ClientGone: _client_gone,
    msgspec.ValidationError: _validation_error,
    msgspec.DecodeError: _validation_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
