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
