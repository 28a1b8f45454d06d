"""The sink's offset arithmetic (cdc/progress.py): lag from cached watermarks; events wait in a
partition exactly when its lag is known and above 0."""

from __future__ import annotations

import pytest

from cdc.progress import NOT_STORED, lag, start_offset


@pytest.mark.parametrize(("next_offset", "low", "high", "expected"), [
    (10, 0, 15, 10),          # stored up to 10: the next one not in DynamoDB
    (NOT_STORED, 4, 15, 4),   # read from the beginning: the low watermark (older ones were deleted)
    (NOT_STORED, -1, 0, 0),   # empty partition whose low watermark is not known yet
    (NOT_STORED, -1, 7, None),  # nothing known but that it holds messages
])
def test_start_offset(next_offset: int, low: int, high: int, expected: int | None) -> None:
    assert start_offset(next_offset, low, high) == expected


@pytest.mark.parametrize(("next_offset", "low", "high", "expected"), [
    (10, 0, 15, 5),
    (15, 0, 15, 0),
    (20, 0, 15, 0),           # a watermark cached before the last fetch: never negative
    (NOT_STORED, 4, 15, 11),
    (NOT_STORED, -1, 0, 0),
    (10, 0, -1, None),        # no watermark cached yet
    (NOT_STORED, -1, 7, None),
])
def test_lag(next_offset: int, low: int, high: int, expected: int | None) -> None:
    assert lag(next_offset, low, high) == expected


@pytest.mark.parametrize(("next_offset", "low", "high", "expected"), [
    (10, 0, 15, True),
    (15, 0, 15, False),
    (NOT_STORED, 0, 3, True),
    (NOT_STORED, -1, 3, False),  # not known yet: not counted as waiting
    (NOT_STORED, 3, 3, False),
])
def test_events_wait(next_offset: int, low: int, high: int, expected: bool) -> None:
    assert ((lag(next_offset, low, high) or 0) > 0) is expected
