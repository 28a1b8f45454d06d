"""The OpenAPI document: what every route file uses to document itself, and the finishing pass that
makes the framework's document say exactly what the API answers.

The framework documents a 400 body of its own shape on every route with parameters, and turns
`X | None` parameters and money's per-currency rule into unions that client generators split into
several types. `finish_document` replaces those parts, once, before the document is first served:
every error answer is application/problem+json with the Problem schema and the codes that route
answers with; money, currency and the price clock are single named schemas; the main operations
carry examples; the live stream is text/event-stream. tests/e2e/test_fuzz.py compares the
document with real answers, tests/e2e/test_generated_clients.py generates clients from it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Annotated, Any

from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.params import Parameter

from core.events import BOOKING_CODE_PATTERN, whole
from core.money import amount_pattern, currencies_by_minor_unit
from service.api.problems import PROBLEM_JSON, RETRY_AFTER_SECONDS

API_KEY_SCHEME = "ApiKey"
# The `security` of every /v1 route: `Authorization: Bearer <api-key>`.
KEY_REQUIRED: list[SecurityRequirement] = [{API_KEY_SCHEME: []}]

# Below 2**63 and exact as a JSON Schema float, so validators agree on the bound.
MAX_POSITION = 9 * 10**18

# Path parameter: validated (422 on mismatch) and documented with its pattern.
BookingCode = Annotated[str, Parameter(pattern=BOOKING_CODE_PATTERN, description="the booking code", max_length=64)]

Problems = Mapping[int, tuple[str, ...]]  # status -> the problem codes a route answers it with

# Every route may fail unexpectedly; every /v1 route checks the key, its scopes, its rate and the
# request's parameters, and reads Postgres.
ANY_ROUTE: Problems = {500: ("internal_error",)}
V1_READ: Problems = {
    **ANY_ROUTE,
    401: ("unauthorized",),
    403: ("forbidden",),
    422: ("validation_error",),
    429: ("rate_limited",),
    503: ("unavailable",),
}
BOOKING_READ: Problems = {**V1_READ, 404: ("booking_not_found",)}
APPEND: Problems = {
    **BOOKING_READ,
    400: ("client_disconnected",),  # the client left mid-body: nobody reads this answer
    403: ("forbidden", "not_owner"),
    408: ("request_timeout",),
    409: ("booking_code_taken", "version_conflict", "event_id_conflict", "personal_data_erased"),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    503: ("unavailable", "unknown_outcome"),
}
ERASE: Problems = {
    **BOOKING_READ,
    403: ("forbidden", "not_owner"),
    503: ("unavailable", "unknown_outcome"),
}
READY: Problems = {**ANY_ROUTE, 503: ("unavailable",)}
SUBSCRIPTION: Problems = {**V1_READ, 404: ("subscription_not_found",)}
SUBSCRIPTION_CHANGE: Problems = {**SUBSCRIPTION, 409: ("subscription_not_paused",)}
SUBSCRIPTION_CREATE: Problems = {
    **V1_READ,
    400: ("client_disconnected",),
    408: ("request_timeout",),
    409: ("subscription_limit",),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    422: ("validation_error", "webhook_url_refused"),
}

# Every code a problem answer can carry: the routes' own, and those of requests that reach no
# route (an unknown path: 404 not_found; a method a path does not take: 405 method_not_allowed).
PROBLEM_CODES = (
    "validation_error", "unauthorized", "forbidden", "not_owner", "not_found", "booking_not_found",
    "method_not_allowed", "request_timeout", "booking_code_taken", "version_conflict", "event_id_conflict",
    "payload_too_large", "unsupported_media_type", "rate_limited", "client_disconnected", "unavailable",
    "unknown_outcome", "internal_error", "bad_request", "personal_data_erased", "subscription_not_found",
    "subscription_not_paused", "subscription_limit", "webhook_url_refused",
)

_CODE_TEXT = {
    "client_disconnected": "the client disconnected before its body was complete (nobody reads this answer)",
    "unauthorized": "no, a malformed, unknown or revoked API key",
    "forbidden": "the key lacks the scope this route needs",
    "not_owner": "a `write` key appends to a booking another department owns (`department` names it)",
    "booking_not_found": "no such booking",
    "request_timeout": "the body did not arrive within LEDGER_HTTP_BODY_TIMEOUT",
    "booking_code_taken": "the code exists (`department` names its owner)",
    "version_conflict": "the booking is not at expected_version (`current_version` says where it is)",
    "event_id_conflict": "an event_id is recorded with other content or for another booking (`event_ids`)",
    "personal_data_erased": "the booking's personal data was erased: no data.personal is taken for it any more",
    "payload_too_large": "the body is over 1 MiB",
    "unsupported_media_type": "the body is not UTF-8 JSON, or carries a Content-Encoding",
    "validation_error": "a parameter, header or body that breaks the rules; `detail` says which",
    "rate_limited": "over the key's request rate (or its open streams): retry after Retry-After seconds",
    "unavailable": "Postgres is unavailable (or, for readiness, not ready): retry after Retry-After seconds",
    "unknown_outcome": "no answer within the write budget, and the events may be stored: send the same request "
                       "again (same event ids) to learn which",
    "internal_error": "the server failed; the failure is logged, never shown",
    "subscription_not_found": "no subscription with this id for the key's department",
    "subscription_not_paused": "resume and skip act on a paused subscription only",
    "subscription_limit": "the department holds LEDGER_WEBHOOK_MAX_PER_DEPARTMENT subscriptions already",
    "webhook_url_refused": "the receiver URL breaks the safety rules (https only, no credentials, a public "
                           "address unless the host is allowed); `detail` says which",
}


def _problem_schema() -> dict[str, Any]:
    """An error answer (application/problem+json)."""
    return {
        "title": "Problem",
        "description": "RFC 9457 problem details; `code` is the stable, machine-readable part.",
        "type": "object",
        "properties": {
            "type": {"type": "string", "examples": ["urn:booking-ledger:problem:version_conflict"]},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"$ref": "#/components/schemas/ProblemCode"},
            "department": {"type": "string",
                           "description": "booking_code_taken, not_owner: the department that owns the booking"},
            "current_version": {"type": "integer", "minimum": 1,
                                "description": "version_conflict: the booking's version now"},
            "event_ids": {"type": "array", "items": {"type": "string", "format": "uuid"},
                          "description": "event_id_conflict: the event ids in conflict"},
        },
        "required": ["type", "title", "status", "detail", "code"],
        "additionalProperties": False,
    }


def _money_schemas() -> dict[str, Any]:
    """Currency and PriceIn. Money's rule spans two fields: the currency decides how many fraction
    digits the amount may have. Generators read one object; validators also read the if/then/else chain."""
    # The largest group last: it is the chain's final `else`.
    groups = sorted(currencies_by_minor_unit().items(), key=lambda group: len(group[1]))
    assert len(groups) > 1
    rule: dict[str, Any] = {"properties": {"amount": {"pattern": whole(amount_pattern(groups[-1][0]))}}}
    for digits, codes in reversed(groups[:-1]):
        rule = {"if": {"properties": {"currency": {"enum": codes}}},
                "then": {"properties": {"amount": {"pattern": whole(amount_pattern(digits))}}},
                "else": rule}
    all_codes = sorted(code for _, codes in groups for code in codes)
    return {
        "Currency": {"title": "Currency", "description": "An active ISO 4217 alphabetic code.", "type": "string",
                     "enum": all_codes},
        "PriceIn": {
            "title": "PriceIn",
            "description": "Money: a non-negative decimal string with at most the currency's minor-unit digits "
                           "(JPY 0, EUR 2, KWD 3).",
            "type": "object",
            "properties": {
                "amount": {"type": "string", "pattern": whole(amount_pattern()), "examples": ["129.90"]},
                "currency": {"$ref": "#/components/schemas/Currency"},
            },
            "required": ["amount", "currency"],
            "additionalProperties": False,
            **rule,
        },
    }


def named_schemas() -> dict[str, Any]:
    """The named schemas this module owns (added to, or replacing, the framework's)."""
    return {
        "Problem": _problem_schema(),
        "ProblemCode": {"title": "ProblemCode", "type": "string", "enum": list(PROBLEM_CODES)},
        **_money_schemas(),
        "Clock": {
            "title": "Clock",
            "description": "recorded: what the ledger knew then (recorded_at); occurred: business time "
                           "(occurred_at, or recorded_at where an event has none).",
            "type": "string",
            "enum": ["recorded", "occurred"],
        },
        "PriceInForce": {
            "title": "PriceInForce",
            "description": "The price in force: the last priced event at or before the moment (then `at` and "
                           "`clock` are given) or at or below the version (then `as_of_version`). `price`, "
                           "`version` and `event_id` are null before the first price.",
            "type": "object",
            "properties": {
                "booking_code": {"type": "string"},
                "price": {"oneOf": [{"$ref": "#/components/schemas/Price"}, {"type": "null"}]},
                "version": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
                "event_id": {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]},
                "at": {"type": "string", "format": "date-time"},
                "clock": {"$ref": "#/components/schemas/Clock"},
                "as_of_version": {"type": "integer", "minimum": 1},
            },
            "required": ["booking_code", "price", "version", "event_id"],
        },
        "Readiness": {
            "title": "Readiness",
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["ready"]}, "schema": {"type": "string"}},
            "required": ["status", "schema"],
        },
    }


_EXAMPLE_EVENT = {
    "event_id": "3f0c8a52-6f0e-4d3b-9a57-0f7c1b2d4e61", "booking_code": "ABC123", "version": 1,
    "type": "BookingPriced", "price": {"amount": "120.00", "currency": "EUR"}, "data": {"reason": "initial quote"},
    "department": "hotel", "occurred_at": "2026-11-26T10:00:00Z", "recorded_at": "2026-11-26T10:00:01.250000Z",
    "position": 4711, "hash": "5a3e0f0c8d3b9a1e27c4f6d8b0a2c4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f",
}
# (operation id, status or "request") -> an example body.
_EXAMPLES: dict[tuple[str, str], Any] = {
    ("append_events", "request"): {
        "expected_version": 0,
        # No event_id (the server makes one): a fuzzer that repeats the example event in a list
        # would otherwise send one id twice, which the API refuses.
        "events": [{"type": "BookingPriced",
                    "price": {"amount": "120.00", "currency": "EUR"}, "data": {"reason": "initial quote"},
                    "occurred_at": "2026-11-26T10:00:00Z"}],
    },
    ("append_events", "201"): {"booking_code": "ABC123", "version": 1, "events": [_EXAMPLE_EVENT]},
    ("get_booking", "200"): {"booking_code": "ABC123", "department": "hotel", "version": 2,
                             "price": {"amount": "99.50", "currency": "EUR"},
                             "created_at": "2026-11-26T10:00:01.250000Z", "updated_at": "2026-11-26T11:30:00Z"},
    ("get_price", "200"): {"booking_code": "ABC123", "price": {"amount": "120.00", "currency": "EUR"}, "version": 1,
                           "event_id": _EXAMPLE_EVENT["event_id"], "at": "2026-11-26T10:30:00Z", "clock": "occurred"},
}


def _problem_response(status: int, codes: tuple[str, ...]) -> dict[str, Any]:
    # One Problem type for every answer, which is what generators build one class from (they refuse
    # keywords beside a $ref, and make a type per answer of an allOf); the codes this answer can
    # carry are listed in x-problem-codes, which tests/e2e/schemathesis_hooks.py checks.
    response: dict[str, Any] = {
        "description": "; ".join(f"{code}: {_CODE_TEXT[code]}" for code in codes),
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        "x-problem-codes": list(codes),
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"description": "seconds to wait before a retry",
                                               "schema": {"type": "integer", "minimum": 1},
                                               "example": RETRY_AFTER_SECONDS}}
    return response


def _single(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the null the framework adds for `X | None = None`: an
    absent parameter is how a client leaves it out."""
    for union in ("oneOf", "anyOf"):
        branches = [b for b in schema.get(union, ()) if b != {"type": "null"}]
        if union in schema and len(branches) == 1:
            rest = {k: v for k, v in schema.items() if k != union}
            return {**branches[0], **rest}
    return schema


def finish_document(document: dict[str, Any], problems: Mapping[str, Problems]) -> dict[str, Any]:
    """A copy of the framework's `document`, finished (see the module's docstring). `problems` has
    the problem answers of every operation, by operation id; an operation missing there is a
    KeyError, so that no route goes undocumented."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    schemas.update(named_schemas())
    for name in ("PriceAtOut", "PriceAtVersionOut"):
        schemas.pop(name, None)
    # Positions run past 2**31: clients need 64-bit integers for them.
    schemas["Event"]["properties"]["position"]["format"] = "int64"
    schemas["FeedOut"]["properties"]["next_after"]["format"] = "int64"
    for path, item in document["paths"].items():
        for operation in item.values():
            operation_id = operation["operationId"]
            responses = {status: answer for status, answer in operation["responses"].items() if int(status) < 400}
            for status, codes in sorted(problems[operation_id].items()):
                responses[str(status)] = _problem_response(status, codes)
            operation["responses"] = responses
            for parameter in operation.get("parameters", ()):
                parameter["schema"] = _single(parameter["schema"])
                if parameter["name"] == "clock":
                    parameter["schema"] = {"$ref": "#/components/schemas/Clock"}
                    parameter["description"] = "the clock `at` is read on; recorded when absent"
                elif parameter["name"] in ("after", "prove"):  # positions (and checkpoint seqs)
                    parameter["schema"]["format"] = "int64"
                    parameter["schema"].setdefault("minimum", 0)  # the framework drops a bound of 0
                elif parameter["name"] == "at" and path.endswith("/price"):
                    parameter["schema"] = {"type": "string", "format": "date-time", "maxLength": 64}
            ok: dict[str, Any] = responses.get("200") or responses.get("201") or {}  # a DELETE answers 204
            if operation_id == "get_price":
                ok["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/PriceInForce"}
            elif operation_id == "ready":
                ok["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/Readiness"}
            elif operation_id == "stream_events":
                ok["content"] = {"text/event-stream": {"schema": {
                    "type": "string", "description": "`id: <position>` and `data: <Event JSON>` per event; "
                                                     "comment lines keep the connection open"}}}
            for answer in ("200", "201"):
                example = _EXAMPLES.get((operation_id, answer))
                if example is not None:
                    responses[answer]["content"]["application/json"]["example"] = example
            request = _EXAMPLES.get((operation_id, "request"))
            if request is not None:
                # On the schema: generators take an example of a whole body there without a warning.
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                schemas[body["$ref"].rsplit("/", 1)[1]]["examples"] = [request]
    return document


class FinishedJson(JsonRenderPlugin):
    """Serves the finished document at /schema/openapi.json (made once, on the first request)."""

    def __init__(self, problems: Mapping[str, Problems]) -> None:
        super().__init__()
        self._problems = problems
        self._rendered: bytes | None = None

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = json.dumps(self.document(openapi_schema)).encode()
        return self._rendered

    def document(self, openapi_schema: dict[str, Any]) -> dict[str, Any]:
        """The document served for the framework's `openapi_schema`."""
        return finish_document(openapi_schema, self._problems)


def served_document(app: Litestar) -> dict[str, Any]:
    """The document `app` serves at /schema/openapi.json, without serving it."""
    assert app.openapi_config is not None
    plugin = next(p for p in app.openapi_config.render_plugins if isinstance(p, FinishedJson))
    return plugin.document(app.openapi_schema.to_schema())


def openapi_config(problems: Mapping[str, Problems]) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="booking-ledger",
        version="1",
        description="The booking price ledger. Every /v1 route takes 'Authorization: Bearer <api-key>'. "
                    "Every error is application/problem+json with a stable `code`: besides each route's own, "
                    "a path that does not exist answers 404 not_found and a method a path does not take "
                    "405 method_not_allowed.",
        path="/schema",
        render_plugins=[ScalarRenderPlugin(), FinishedJson(problems)],
        components=Components(security_schemes={API_KEY_SCHEME: SecurityScheme(
            type="http", scheme="bearer", bearer_format="API key",
            description="A department's API key (booking-ledger keys create), as 'Authorization: Bearer <key>'.",
        )}),
    )
