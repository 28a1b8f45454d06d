"""Schemathesis hooks for tests/e2e/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """An append body's expected_version written as 3.0 is sent as 3.

    JSON Schema's "integer" admits 3.0, and no keyword can exclude it; the API takes JSON integers
    only (0.9999999999999999999 would otherwise be read as 1), so 3.0 is not a valid value.
    """
    if isinstance(body, dict) and isinstance(body.get("expected_version"), float):
        return {**body, "expected_version": int(body["expected_version"])}
    return body


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
