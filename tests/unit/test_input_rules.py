"""Issue 17: whole-string patterns, occurred_at at its limits, duplicate keys, the data limit."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec
import pytest

from core.events import BOOKING_CODE_PATTERN, EVENT_TYPE_PATTERN, MAX_DATA_BYTES, data_size
from core.money import Money, MoneyError
from service.api.openapi import named_schemas
from service.api.schemas import decode_append


def event_body(**event: object) -> bytes:
    return msgspec.json.encode({"expected_version": 0, "events": [{"type": "A", **event}]})


@pytest.mark.parametrize("value", ["R1\n", "R1\r\n", "\nR1"])
def test_a_booking_code_with_a_newline_does_not_match(value: str) -> None:
    assert re.search(BOOKING_CODE_PATTERN, value) is None
    assert re.search(BOOKING_CODE_PATTERN, "R1") is not None


@pytest.mark.parametrize("event", [{"type": "Abc\n"}, {"price": {"amount": "5.00\n", "currency": "EUR"}},
                                   {"price": {"amount": "5.00", "currency": "EUR\n"}}])
def test_a_final_newline_is_refused_in_type_amount_and_currency(event: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_append(event_body(**event))


def test_money_refuses_a_final_newline() -> None:
    with pytest.raises(MoneyError):
        Money.parse("5.00\n", "EUR")


def test_the_published_amount_patterns_refuse_a_final_newline() -> None:
    price_in = named_schemas()["PriceIn"]
    patterns = [price_in["properties"]["amount"]["pattern"]]
    rule = price_in
    while "if" in rule:  # one branch per number of fraction digits
        patterns.append(rule["then"]["properties"]["amount"]["pattern"])
        rule = rule["else"]
    patterns.append(rule["properties"]["amount"]["pattern"])
    assert len(patterns) == 5
    for pattern in patterns:
        assert re.search(pattern, "5") and not re.search(pattern, "5\n")
    assert not re.search(EVENT_TYPE_PATTERN, "Abc\n")


@pytest.mark.parametrize("moment", [
    "0001-01-01T00:00:00Z",  # Go's zero time.Time; asyncpg's -infinity
    "9999-12-31T23:59:59.999999Z",  # asyncpg's infinity
    "0001-01-01T00:00:00+14:00",  # year 0 in UTC
    "0001-01-01T13:59:59.999999+14:00",
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
    "9999-12-31T10:00:00-14:00",
    "9999-12-31T23:59:59.9999999Z",  # rounds into year 10000
])
def test_occurred_at_outside_the_range_is_refused(moment: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="occurred_at|RFC3339"):
        decode_append(event_body(occurred_at=moment))


@pytest.mark.parametrize(("moment", "utc"), [
    ("0001-01-01T00:00:00.000001Z", datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999998Z", datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)),
    ("0001-01-01T14:00:00.000001+14:00", datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
    ("9999-12-31T09:59:59.999998-14:00", datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)),
    # Sub-microsecond digits are rounded to the nearest microsecond (half up), as msgspec reads them.
    ("2026-11-26T10:00:00.1234565Z", datetime(2026, 11, 26, 10, 0, 0, 123457, tzinfo=UTC)),
    ("2026-11-26T10:00:00.9999996+01:00", datetime(2026, 11, 26, 9, 0, 1, tzinfo=UTC)),
])
def test_occurred_at_inside_the_range_is_kept_in_utc(moment: str, utc: datetime) -> None:
    occurred_at = decode_append(event_body(occurred_at=moment)).events[0].occurred_at
    assert occurred_at == utc and occurred_at.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("body", [
    b'{"expected_version":5,"expected_version":0,"events":[{"type":"A"}]}',
    b'{"events":[{"type":"A","type":"B"}]}',
    b'{"events":[{"type":"A","data":{"k":1,"k":2}}]}',
    b'{"events":[{"type":"A","data":{"deep":[{"k":1,"k":1}]}}]}',
])
def test_duplicate_keys_are_refused(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError, match="more than once"):
        decode_append(body)


def test_the_data_limit_is_measured_on_compact_json() -> None:
    many_keys = {f"k{i:05d}": i % 10 for i in range(22000)}  # 22,000 small keys: jsonb text is larger
    assert data_size(many_keys) == len(msgspec.json.encode(many_keys))
    decode_append(event_body(data=many_keys))

    exact = {"blob": ""}
    exact["blob"] = "x" * (MAX_DATA_BYTES - len(msgspec.json.encode(exact)))
    assert len(msgspec.json.encode(exact)) == MAX_DATA_BYTES
    decode_append(event_body(data=exact))
    exact["blob"] += "x"
    with pytest.raises(msgspec.ValidationError, match="over the 262144 byte limit"):
        decode_append(event_body(data=exact))


def test_numbers_count_as_the_ledger_writes_them_out() -> None:
    assert data_size({"n": 1e20}) == len(b'{"n":100000000000000000000}')
    assert data_size({"n": 1e308}) == len(b'{"n":}') + 309
    assert data_size({"n": 1e-7}) == len(b'{"n":0.0000001}')
    assert data_size({"n": 1.5e-300}) == len(b'{"n":}') + 303
    plain = {"n": 1.5, "m": 0.001, "b": True, "i": 10**70}
    assert data_size(plain) == len(msgspec.json.encode(plain))
    # 5 bytes as sent, 309 digits as Postgres keeps it and the streams carry it: 309,000 bytes.
    with pytest.raises(msgspec.ValidationError, match="over the 262144 byte limit"):
        decode_append(event_body(data={"x": [1e308] * 1000}))
    with pytest.raises(msgspec.ValidationError, match="over the 262144 byte limit"):
        decode_append(event_body(data={"x": [1e63] * 5000}))  # 25 KB as sent, 320 KB written out
    with pytest.raises(msgspec.ValidationError, match="over the 262144 byte limit"):
        decode_append(event_body(data={"x": [1e-300] * 1000}))  # 7 KB as sent, 302 KB written out
