"""Nothing in a request is picked silently: a repeated query parameter or header, an integer
written as 1.0 or 1e0 (in a query or a JSON body) is refused with 422, on every /v1 route."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import random_code, sql
from tests.e2e.conftest import Keys, auth
from tests.e2e.test_hardening import assert_problem, create, events_url

STREAM = "/v1/events/stream"
MOMENT = "2026-11-26T10:00:00Z"


@pytest.fixture(scope="module")
def booking(api: str, keys: Keys) -> str:
    code = random_code("STRICT")
    assert create(api, keys.hotel, code, price={"amount": "1.00", "currency": "EUR"}).status_code == 201
    return code


def get(api: str, path: str, query: str, key: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """`query` is sent as written (httpx would merge or encode it)."""
    with httpx.Client(timeout=30) as client:
        request = client.build_request("GET", f"{api}{path}?{query}", headers={**auth(key), **(headers or {})})
        answer = client.send(request, stream=True)  # a 200 stream never ends: read only its head
        try:
            if answer.status_code != 200 or path != STREAM:
                answer.read()
        finally:
            answer.close()
        return answer


REPEATED = [
    ("/v1/bookings/{code}", "x=1&x=1"),
    ("/v1/bookings/{code}/events", "from_version=1&from_version=2"),
    ("/v1/bookings/{code}/events", "limit=1&limit=1000"),
    ("/v1/events", "after=0&after=5"),
    ("/v1/events", "limit=1&lim%69t=2"),  # one name, however it is encoded
    ("/v1/bookings/{code}/price", "version=1&version=99"),
    ("/v1/bookings/{code}/price", f"at={MOMENT}&at=2030-01-01T00:00:00Z"),
    ("/v1/bookings/{code}/price", f"at={MOMENT}&clock=recorded&clock=occurred"),
    (STREAM, "department=hotel&department=car"),
    (STREAM, "type=A&type=B"),
    (STREAM, "booking_code=A&booking_code=B"),
    (STREAM, "after=0&after=0"),
]


@pytest.mark.parametrize(("path", "query"), REPEATED, ids=[f"{p} {q}" for p, q in REPEATED])
def test_a_repeated_query_parameter_is_refused(api: str, keys: Keys, booking: str, path: str, query: str) -> None:
    path = path.format(code=booking)
    answer = get(api, path, query, keys.hotel)
    assert_problem(answer, 422, "validation_error")
    assert "more than once" in answer.json()["detail"]
    assert_problem(get(api, path, query, "bl_0000000000000000_x"), 401, "unauthorized")  # authentication first


def test_a_repeated_query_parameter_on_an_append_writes_nothing(api: str, keys: Keys, database_url: str) -> None:
    code = random_code("STRICT")
    answer = httpx.post(f"{events_url(api, code)}?a=1&a=1", headers=auth(keys.hotel), timeout=30,
                        json={"expected_version": 0, "events": [{"type": "A"}]})
    assert_problem(answer, 422, "validation_error")
    assert sql(database_url, "SELECT count(*) FROM bookings WHERE code = $1", code) == 0


NOT_DIGITS = [
    ("/v1/bookings/{code}/price", "version={}"),
    ("/v1/bookings/{code}/events", "from_version={}"),
    ("/v1/bookings/{code}/events", "limit={}"),
    ("/v1/events", "after={}"),
    ("/v1/events", "limit={}"),
    (STREAM, "after={}"),
]


@pytest.mark.parametrize("value", ["1.0", "1e0", "1E0", "1.", "0x1", "%201", "1%20", "%C2%B2", "1" * 5000])
@pytest.mark.parametrize(("path", "query"), NOT_DIGITS, ids=[f"{p} {q}" for p, q in NOT_DIGITS])
def test_an_integer_parameter_is_digits_only(api: str, keys: Keys, booking: str, path: str, query: str,
                                             value: str) -> None:
    answer = get(api, path.format(code=booking), query.format(value), keys.hotel)
    assert_problem(answer, 422, "validation_error")


def test_plain_digits_still_pass(api: str, keys: Keys, booking: str) -> None:
    answer = get(api, f"/v1/bookings/{booking}/price", "version=1", keys.hotel)
    assert answer.status_code == 200 and answer.json()["as_of_version"] == 1
    assert get(api, f"/v1/bookings/{booking}/events", "from_version=1&limit=10", keys.hotel).status_code == 200
    assert get(api, "/v1/events", "after=0&limit=1", keys.hotel).status_code == 200


def test_two_last_event_id_or_content_type_headers_are_refused(api: str, keys: Keys, database_url: str) -> None:
    with httpx.Client(timeout=30) as client:
        request = client.build_request("GET", f"{api}{STREAM}", headers=[
            ("Authorization", f"Bearer {keys.hotel}"), ("Last-Event-ID", "5"), ("Last-Event-ID", "7")])
        answer = client.send(request)
        assert_problem(answer, 422, "validation_error")
        code = random_code("STRICT")
        request = client.build_request("POST", events_url(api, code), content=b'{"events": [{"type": "A"}], '
                                       b'"expected_version": 0}', headers=[
            ("Authorization", f"Bearer {keys.hotel}"), ("Content-Type", "application/json"),
            ("Content-Type", "text/plain")])
        assert_problem(client.send(request), 422, "validation_error")
    assert sql(database_url, "SELECT count(*) FROM bookings WHERE code = $1", code) == 0


@pytest.mark.parametrize("number", ["1.0", "0.9999999999999999999", "1e0", "1E0", "0.0", "0e5", "1.00000000000000001"])
def test_expected_version_must_be_a_json_integer(api: str, keys: Keys, booking: str, database_url: str,
                                                 number: str) -> None:
    before = sql(database_url, "SELECT version FROM bookings WHERE code = $1", booking)
    body = b'{"expected_version": %s, "events": [{"type": "A"}]}' % number.encode()
    answer = httpx.post(events_url(api, booking), content=body, timeout=30,
                        headers={**auth(keys.hotel), "Content-Type": "application/json"})
    assert_problem(answer, 422, "validation_error")
    assert sql(database_url, "SELECT version FROM bookings WHERE code = $1", booking) == before
    fresh = random_code("STRICT")
    answer = httpx.post(events_url(api, fresh), content=body.replace(number.encode(), b"0"), timeout=30,
                        headers={**auth(keys.hotel), "Content-Type": "application/json"})
    assert answer.status_code == 201  # the same body with a JSON integer
