"""GET /v1/bookings/{code}/price over HTTP: the answer's shape, 404 and the 422 cases."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import random_code
from tests.e2e.conftest import Keys, auth
from tests.e2e.test_http import assert_problem, events_url, priced


@pytest.fixture
async def client() -> httpx.AsyncClient:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def test_price_at_a_moment_and_a_version(api: str, keys: Keys, client) -> None:
    code = random_code("PRICE")
    created = await client.post(events_url(api, code), headers=auth(keys.hotel), json={
        "expected_version": 0, "events": [{"type": "Held"}, priced("120.00", occurred_at="2026-11-01T10:00:00Z")]})
    assert created.status_code == 201, created.text
    recorded = created.json()["events"][0]["recorded_at"]
    url = f"{api}/v1/bookings/{code}/price"

    answer = await client.get(url, params={"at": recorded}, headers=auth(keys.reader))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["price"] == {"amount": "120.00", "currency": "EUR"} and body["version"] == 2
    assert body["event_id"] == created.json()["events"][1]["event_id"] and body["clock"] == "recorded"
    assert set(body) == {"booking_code", "price", "version", "event_id", "at", "clock"}

    before = (await client.get(url, params={"at": "2026-11-01T10:59:59.999999+01:00", "clock": "occurred"},
                               headers=auth(keys.reader))).json()
    assert before["price"] is None and before["version"] is None and before["event_id"] is None
    assert before["at"] == "2026-11-01T09:59:59.999999Z"
    exact = (await client.get(url, params={"at": "2026-11-01T10:00:00Z", "clock": "occurred"},
                              headers=auth(keys.reader))).json()
    assert exact["version"] == 2

    by_version = (await client.get(url, params={"version": 1}, headers=auth(keys.reader))).json()
    assert by_version == {"booking_code": code, "price": None, "version": None, "event_id": None, "as_of_version": 1}
    assert (await client.get(url, params={"version": 2}, headers=auth(keys.reader))).json()["version"] == 2


async def test_price_errors(api: str, keys: Keys, client) -> None:
    code = random_code("PRICE")
    await client.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                      headers=auth(keys.hotel))
    url = f"{api}/v1/bookings/{code}/price"
    assert_problem(await client.get(f"{api}/v1/bookings/{random_code('NO')}/price", params={"version": 1},
                                    headers=auth(keys.reader)), 404, "booking_not_found")
    for params in ({}, {"at": "2026-11-01T10:00:00Z", "version": 1}, {"at": "2026-11-01T10:00:00"},
                   {"at": "yesterday"}, {"at": "2026-11-01T10:00:00Z", "clock": "wall"}, {"version": 0},
                   {"version": 1, "clock": "occurred"}, {"clock": "recorded"},
                   # valid times whose UTC falls outside the years 1 to 9999
                   {"at": "0001-01-01T00:00:00+01:00"}, {"at": "9999-12-31T23:00:00-01:00"}):
        assert_problem(await client.get(url, params=params, headers=auth(keys.reader)), 422, "validation_error")
    # Authentication first, whatever else is wrong.
    assert_problem(await client.get(url, params={"version": 0}), 401, "unauthorized")
