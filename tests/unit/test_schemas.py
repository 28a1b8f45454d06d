import uuid

import msgspec
import pytest

from core.events import MAX_DATA_BYTES
from service.api.schemas import decode_append


def body(**fields: object) -> bytes:
    return msgspec.json.encode(fields)


def test_a_full_event_decodes() -> None:
    request = decode_append(body(
        expected_version=0,
        events=[{"event_id": str(uuid.uuid4()), "type": "BookingPriced",
                 "price": {"amount": "120.00", "currency": "EUR"},
                 "data": {"reason": "initial quote"}, "occurred_at": "2026-11-26T10:00:00Z"}],
    ))
    assert request.expected_version == 0
    assert request.events[0].price.money().currency == "EUR"


@pytest.mark.parametrize(
    "fields",
    [
        {"events": []},
        {"events": [{"type": "A"}] * 101},
        {"events": [{"type": "1starts-with-digit"}]},
        {"events": [{"type": "x" * 101}]},
        {"events": [{"type": "A", "price": {"amount": 120.5, "currency": "EUR"}}]},
        {"events": [{"type": "A", "price": {"amount": "1.001", "currency": "EUR"}}]},
        {"events": [{"type": "A", "price": {"amount": "1", "currency": "ZZZ"}}]},
        {"events": [{"type": "A", "version": 3}]},
        {"events": [{"type": "A", "department": "car"}]},
        {"events": [{"type": "A", "position": 1}]},
        {"events": [{"type": "A"}], "department": "car"},
        {"events": [{"type": "A", "data": [1, 2]}]},
        {"events": [{"type": "A", "data": "text"}]},
        {"events": [{"type": "A", "occurred_at": "2026-11-26T10:00:00"}]},
        {"events": [{"type": "A", "event_id": "not-a-uuid"}]},
        {"events": [{"type": "A"}], "expected_version": -1},
        {"events": [{"type": "A"}], "expected_version": "1"},
        {"events": [{"type": "A", "event_id": "6f1d3c34-5d2e-4c55-9a43-1d1f0b2c9a10"},
                    {"type": "B", "event_id": "6f1d3c34-5d2e-4c55-9a43-1d1f0b2c9a10"}]},
        {"events": [{"type": "A", "data": {"blob": "x" * (MAX_DATA_BYTES // 2)}},
                    {"type": "A", "data": {"blob": "x" * (MAX_DATA_BYTES // 2)}}]},
    ],
)
def test_invalid_bodies_are_refused(fields: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_append(body(**fields))


def test_malformed_json_is_refused() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_append(b'{"events": [')


def test_bodies_that_are_not_utf8_or_nest_too_deeply_are_decode_errors() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_append(b'{"events": [{"type": "A", "data": {"k": "\xe9t\xe9"}}]}')
    deep = b'{"events": [{"type": "A", "data": {"k": ' + b"[" * 5000 + b"]" * 5000 + b"}}]}"
    with pytest.raises(msgspec.DecodeError):
        decode_append(deep)
