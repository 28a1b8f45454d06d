"""Issue 17: the schema refuses what the API refuses, for every writer (migration 0005)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from core.events import event_from_row
from service.ledger.append import NewEvent, append
from service.ledger.errors import InvalidData
from service.ledger.keys import InvalidKeySpec, create_key
from tests.conftest import random_code


async def test_a_code_or_type_with_a_final_newline_is_refused_by_the_schema(pool) -> None:
    code = random_code()
    for bad_code, bad_type in ((code + "\n", "A"), (code, "Abc\n")):
        with pytest.raises(InvalidData):
            await append(pool, code=bad_code, department="hotel", may_write_any=False, expected_version=0,
                         events=[NewEvent(uuid.uuid4(), bad_type)])
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM bookings WHERE code LIKE $1", code + "%") == 0
        with pytest.raises(Exception, match="api_keys_department_format"):
            await conn.execute("INSERT INTO api_keys (id, department, scopes, key_hash) "
                               "VALUES ($1, $2, '{read}', $3)", uuid.uuid4().hex[:16], "x\n", b"\0" * 32)


async def test_create_key_refuses_a_department_with_a_final_newline(pool) -> None:
    with pytest.raises(InvalidKeySpec):
        await create_key(pool, "x\n")


@pytest.mark.parametrize("moment", [datetime.min.replace(tzinfo=UTC),
                                    datetime.max.replace(tzinfo=UTC)])
async def test_the_driver_s_infinity_instants_are_never_stored(pool, moment: datetime) -> None:
    with pytest.raises(InvalidData):
        await append(pool, code=random_code(), department="hotel", may_write_any=False, expected_version=0,
                     events=[NewEvent(uuid.uuid4(), "A", occurred_at=moment)])


def test_a_legacy_infinity_row_is_emitted_with_an_offset() -> None:
    row = {"event_id": uuid.uuid4(), "booking_code": "R1", "version": 1, "type": "A", "price_amount": None,
           "price_currency": None, "data": None, "department": "hotel", "occurred_at": datetime.min,
           "recorded_at": datetime.now(UTC), "position": 1, "hash": bytes(32)}
    assert event_from_row(row).occurred_at.utcoffset() is not None


async def test_the_data_limit_is_not_measured_on_jsonb_text(pool) -> None:
    many_keys = {f"k{i:05d}": i % 10 for i in range(22000)}  # 242,001 compact bytes, more as jsonb text
    result = await append(pool, code=random_code(), department="hotel", may_write_any=False, expected_version=0,
                          events=[NewEvent(uuid.uuid4(), "A", data=many_keys)])
    assert result.events[0].data == many_keys
