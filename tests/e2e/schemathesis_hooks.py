"""Schemathesis hooks for tests/e2e/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import schemathesis

# The instants the ledger stores lie strictly between these (core/events.py, utc_instant).
_OCCURRED_AFTER = datetime(1, 1, 1, tzinfo=UTC)
_OCCURRED_BEFORE = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """An append body's expected_version written as 3.0 is sent as 3, and an occurred_at at or past
    the ends of time the ledger stores is sent as a time inside them.

    JSON Schema's "integer" admits 3.0, and no keyword can exclude it; the API takes JSON integers
    only (0.9999999999999999999 would otherwise be read as 1), so 3.0 is not a valid value. Its
    "date-time" cannot bound an instant either: 0001-01-01T00:00:00Z, which many encoders write for
    "no time", is refused (422, docs/api.md), and the generator sometimes picks it.
    """
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("expected_version"), float):
        body = {**body, "expected_version": int(body["expected_version"])}
    if isinstance(body.get("events"), list):
        body = {**body, "events": [_inside_time(e) for e in body["events"]]}
    return body


def _inside_time(event: Any) -> Any:
    if not isinstance(event, dict) or not isinstance(event.get("occurred_at"), str):
        return event
    try:
        moment = datetime.fromisoformat(event["occurred_at"]).astimezone(UTC)
        inside = _OCCURRED_AFTER < moment < _OCCURRED_BEFORE
    except (ValueError, OverflowError):
        inside = False
    return event if inside else {**event, "occurred_at": "2026-11-26T10:00:00Z"}


@schemathesis.check
def problem_code_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error answer is a problem whose `status` is the answer's and whose `code` is one the
    document lists for that status of that operation (`x-problem-codes`, see service/api/openapi.py).

    response_schema_conformance checks the body against the Problem schema, whose `code` may be
    any of the API's codes; this narrows it to the route's own.
    """
    if response.status_code < 400:
        return None
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code))
    if documented is None:
        return None  # status_code_conformance reports an undocumented status
    body = response.json()
    assert body.get("status") == response.status_code, f"problem status {body.get('status')} on a " \
        f"{response.status_code} answer"
    codes = documented.get("x-problem-codes", [])
    assert body.get("code") in codes, f"problem code {body.get('code')!r} on a {response.status_code} answer " \
        f"of {case.operation.label}; the document lists {codes}"
    return True
