"""The HTTP contract against a real server process with two workers and a real Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from devstack.processes import wait_until
from tests.conftest import random_code
from tests.e2e.conftest import Keys, auth, cli, make_key, start_server

PROBLEM = "application/problem+json"


def events_url(api: str, code: str) -> str:
    return f"{api}/v1/bookings/{code}/events"


def priced(amount: str = "120.00", currency: str = "EUR", **extra) -> dict:
    return {"type": "BookingPriced", "price": {"amount": amount, "currency": currency}, **extra}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    assert "Traceback" not in response.text
    return body


@pytest.fixture
async def client() -> httpx.AsyncClient:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def test_walkthrough_create_collide_append_retry_read(api: str, keys: Keys, client) -> None:
    code = random_code("ABC")
    event_id = str(uuid.uuid4())
    body = {"expected_version": 0, "events": [priced(event_id=event_id, data={"reason": "initial quote"},
                                                      occurred_at="2026-11-26T10:00:00Z")]}
    created = await client.post(events_url(api, code), json=body, headers=auth(keys.hotel))
    assert created.status_code == 201, created.text
    event = created.json()["events"][0]
    assert created.json()["version"] == 1
    assert event["event_id"] == event_id and event["department"] == "hotel"
    assert event["price"] == {"amount": "120.00", "currency": "EUR"} and event["data"] == {"reason": "initial quote"}
    assert set(event) == {"event_id", "booking_code", "version", "type", "price", "data", "department",
                          "occurred_at", "recorded_at", "position", "hash"}

    retried = await client.post(events_url(api, code), json=body, headers=auth(keys.hotel))
    assert retried.status_code == 200 and retried.json() == created.json()

    collision = await client.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                                  headers=auth(keys.car))
    assert assert_problem(collision, 409, "booking_code_taken")["department"] == "hotel"

    appended = await client.post(events_url(api, code), json={"expected_version": 1, "events": [priced("99.5")]},
                                 headers=auth(keys.hotel))
    assert appended.status_code == 201 and appended.json()["version"] == 2

    stale = await client.post(events_url(api, code), json={"expected_version": 1, "events": [priced()]},
                              headers=auth(keys.hotel))
    assert assert_problem(stale, 409, "version_conflict")["current_version"] == 2

    booking = (await client.get(f"{api}/v1/bookings/{code}", headers=auth(keys.car))).json()
    assert booking["department"] == "hotel" and booking["version"] == 2
    assert booking["price"] == {"amount": "99.50", "currency": "EUR"}

    page = (await client.get(events_url(api, code), params={"limit": 1}, headers=auth(keys.reader))).json()
    assert [e["version"] for e in page["events"]] == [1] and page["next_from_version"] == 2
    page = (await client.get(events_url(api, code), params={"from_version": 2}, headers=auth(keys.reader))).json()
    assert [e["version"] for e in page["events"]] == [2] and page["next_from_version"] is None

    feed = (await client.get(f"{api}/v1/events", params={"after": event["position"] - 1, "limit": 1000},
                             headers=auth(keys.reader))).json()
    assert event_id in {e["event_id"] for e in feed["events"]}


async def test_forty_concurrent_http_creators_from_two_departments(api: str, keys: Keys, client) -> None:
    code = random_code("RACE")
    responses = await asyncio.gather(*(
        client.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                    headers=auth((keys.hotel, keys.car)[i % 2]))
        for i in range(40)
    ))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 39
    assert all(r.json()["code"] == "booking_code_taken" for r in responses if r.status_code == 409)
    page = (await client.get(events_url(api, code), headers=auth(keys.reader))).json()
    assert len(page["events"]) == 1


async def test_forty_concurrent_http_appends_at_one_version(api: str, keys: Keys, client) -> None:
    code = random_code()
    await client.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                      headers=auth(keys.hotel))
    responses = await asyncio.gather(*(
        client.post(events_url(api, code), json={"expected_version": 1, "events": [priced("1")]},
                    headers=auth(keys.hotel))
        for _ in range(40)
    ))
    assert sorted(r.status_code for r in responses) == [201] + [409] * 39
    page = (await client.get(events_url(api, code), headers=auth(keys.reader))).json()
    assert [e["version"] for e in page["events"]] == [1, 2]


async def test_read_your_writes_on_fresh_connections_across_workers(api: str, keys: Keys) -> None:
    # Every request on a new connection, so both workers serve writes and reads in turn.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as fresh:
        for _ in range(30):
            code = random_code()
            created = await fresh.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                                       headers=auth(keys.hotel))
            assert created.status_code == 201
            read = await fresh.get(f"{api}/v1/bookings/{code}", headers=auth(keys.hotel))
            assert read.status_code == 200 and read.json()["version"] == 1


BAD_BODIES = [
    ("no events", {"expected_version": 0, "events": []}),
    ("101 events", {"expected_version": 0, "events": [{"type": "A"}] * 101}),
    ("bad type", {"expected_version": 0, "events": [{"type": "9lives"}]}),
    ("amount as number",
     {"expected_version": 0, "events": [{"type": "A", "price": {"amount": 12.5, "currency": "EUR"}}]}),
    ("too many decimals", {"expected_version": 0, "events": [priced("1.001")]}),
    ("JPY decimals", {"expected_version": 0, "events": [priced("100.5", "JPY")]}),
    ("negative amount", {"expected_version": 0, "events": [priced("-1.00")]}),
    ("unknown currency", {"expected_version": 0, "events": [priced("1.00", "ZZZ")]}),
    ("server-owned version", {"expected_version": 0, "events": [{"type": "A", "version": 1}]}),
    ("server-owned department", {"expected_version": 0, "events": [{"type": "A", "department": "car"}]}),
    ("server-owned position", {"expected_version": 0, "events": [{"type": "A", "position": 1}]}),
    ("top-level department", {"expected_version": 0, "department": "car", "events": [{"type": "A"}]}),
    ("unknown field", {"expected_version": 0, "events": [{"type": "A", "colour": "red"}]}),
    ("data not an object", {"expected_version": 0, "events": [{"type": "A", "data": [1]}]}),
    ("data over 256 KiB", {"expected_version": 0, "events": [{"type": "A", "data": {"x": "y" * 262_200}}]}),
    ("naive occurred_at", {"expected_version": 0, "events": [{"type": "A", "occurred_at": "2026-11-26T10:00:00"}]}),
    ("bad event_id", {"expected_version": 0, "events": [{"type": "A", "event_id": "42"}]}),
    ("negative expected_version", {"expected_version": -1, "events": [{"type": "A"}]}),
    ("string expected_version", {"expected_version": "0", "events": [{"type": "A"}]}),
    ("\\u0000 in data", {"expected_version": 0, "events": [{"type": "A", "data": {"k": "\u0000"}}]}),
]


@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
async def test_invalid_requests_get_422_and_write_nothing(api: str, keys: Keys, client, case: str, body: dict) -> None:
    code = random_code()
    response = await client.post(events_url(api, code), json=body, headers=auth(keys.hotel))
    assert_problem(response, 422, "validation_error")
    assert (await client.get(f"{api}/v1/bookings/{code}", headers=auth(keys.hotel))).status_code == 404


@pytest.mark.parametrize("code", ["-starts-with-dash", "a" * 65, "has space", "ümlaut", "semi;colon"])
async def test_bad_booking_codes_get_422(api: str, keys: Keys, client, code: str) -> None:
    response = await client.post(events_url(api, code), json={"expected_version": 0, "events": [{"type": "A"}]},
                                 headers=auth(keys.hotel))
    assert_problem(response, 422, "validation_error")
    assert_problem(await client.get(f"{api}/v1/bookings/{code}", headers=auth(keys.hotel)), 422, "validation_error")


async def test_limits_and_media_types(api: str, keys: Keys, client) -> None:
    code = random_code()
    url = events_url(api, code)
    # 413 is test_security's: there over a raw socket, because a client still sending a big body
    # may see the connection reset before it reads the answer (seen on a busy machine).
    assert_problem(await client.post(url, content='{"events":[{"type":"A"}]}',
                                     headers={**auth(keys.hotel), "content-type": "text/plain"}),
                   415, "unsupported_media_type")
    assert_problem(await client.post(url, content=b"{}", headers=auth(keys.hotel)), 415, "unsupported_media_type")
    as_json = {**auth(keys.hotel), "content-type": "application/json"}
    assert_problem(await client.post(url, content='{"events": [', headers=as_json), 422, "validation_error")
    latin1 = '{"expected_version": 0, "events": [{"type": "A", "data": {"k": "été"}}]}'.encode("latin-1")
    assert_problem(await client.post(url, content=latin1, headers=as_json), 422, "validation_error")
    for params in ({"limit": 0}, {"limit": 1001}, {"from_version": 0}, {"limit": "x"}):
        assert_problem(await client.get(url, params=params, headers=auth(keys.hotel)), 422, "validation_error")
    assert_problem(await client.get(f"{api}/v1/events", params={"after": -1}, headers=auth(keys.hotel)),
                   422, "validation_error")
    assert_problem(await client.get(f"{api}/v1/bookings/{code}", headers=auth(keys.hotel)), 404, "booking_not_found")
    assert_problem(await client.get(url, headers=auth(keys.hotel)), 404, "booking_not_found")
    assert_problem(await client.post(url, json={"events": [{"type": "A"}]}, headers=auth(keys.hotel)),
                   404, "booking_not_found")
    assert_problem(await client.get(f"{api}/v1/nothing-here", headers=auth(keys.hotel)), 404, "not_found")
    assert_problem(await client.delete(f"{api}/v1/bookings/{code}", headers=auth(keys.hotel)),
                   405, "method_not_allowed")


async def test_event_id_conflict_over_http(api: str, keys: Keys, client) -> None:
    event_id = str(uuid.uuid4())
    first, second = random_code(), random_code()
    await client.post(events_url(api, first), json={"expected_version": 0, "events": [priced(event_id=event_id)]},
                      headers=auth(keys.hotel))
    response = await client.post(events_url(api, second),
                                 json={"expected_version": 0, "events": [priced(event_id=event_id)]},
                                 headers=auth(keys.hotel))
    assert assert_problem(response, 409, "event_id_conflict")["event_ids"] == [event_id]
    assert (await client.get(f"{api}/v1/bookings/{second}", headers=auth(keys.hotel))).status_code == 404


async def test_keys_scopes_and_ownership(api: str, keys: Keys, client, database_url: str) -> None:
    code = random_code()
    url = events_url(api, code)
    create = {"expected_version": 0, "events": [priced()]}
    assert_problem(await client.post(url, json=create), 401, "unauthorized")
    assert_problem(await client.post(url, json=create, headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    unknown_key = "bl_0123456789abcdef_" + "x" * 43
    assert_problem(await client.post(url, json=create, headers=auth(unknown_key)), 401, "unauthorized")
    assert_problem(await client.get(f"{api}/v1/events"), 401, "unauthorized")
    assert_problem(await client.post(url, json=create, headers=auth(keys.reader)), 403, "forbidden")
    assert_problem(await client.get(url, headers=auth(keys.writer)), 403, "forbidden")

    assert (await client.post(url, json=create, headers=auth(keys.hotel))).status_code == 201
    append = {"events": [priced("5")]}
    by_car = await client.post(url, json=append, headers=auth(keys.car))
    assert assert_problem(by_car, 403, "not_owner")["department"] == "hotel"
    by_pricing = await client.post(url, json=append, headers=auth(keys.pricing))
    assert by_pricing.status_code == 201 and by_pricing.json()["events"][0]["department"] == "pricing"
    # The department comes from the key, whatever the body says: the body cannot even say it.
    booking = (await client.get(f"{api}/v1/bookings/{code}", headers=auth(keys.reader))).json()
    assert booking["department"] == "hotel" and booking["version"] == 2


async def test_a_revoked_key_is_refused_at_once_by_every_worker(api: str, database_url: str) -> None:
    key = make_key(database_url, "hotel", "read")
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as fresh:
        assert (await fresh.get(f"{api}/v1/events", params={"limit": 1}, headers=auth(key))).status_code == 200
        key_id = key.split("_")[1]
        listing = cli(database_url, "keys", "list").stdout
        assert key_id in listing and key not in listing and key.split("_", 2)[2] not in listing
        cli(database_url, "keys", "revoke", key_id)
        for _ in range(20):
            assert_problem(await fresh.get(f"{api}/v1/events", headers=auth(key)), 401, "unauthorized")
    assert cli(database_url, "keys", "revoke", key_id, check=False).returncode == 1


def test_rate_limit_answers_429_with_retry_after(database_url: str) -> None:
    server = start_server(database_url, workers=1, LEDGER_RATE_LIMIT="3")
    try:
        key = make_key(database_url, "hotel", "read")
        with httpx.Client(timeout=10) as client:
            responses = [client.get(f"{server.url}/v1/events", params={"limit": 1}, headers=auth(key))
                         for _ in range(10)]
        limited = [r for r in responses if r.status_code == 429]
        assert limited and all(r.status_code in (200, 429) for r in responses)
        assert_problem(limited[0], 429, "rate_limited")
        assert int(limited[0].headers["Retry-After"]) >= 1
    finally:
        server.stop()


def test_store_unavailable_answers_503_with_retry_after(database_url: str) -> None:
    from tests.conftest import free_port

    unreachable = f"postgresql://ledger@127.0.0.1:{free_port()}/ledger"
    server = start_server(unreachable, workers=1, ready_path="/health/live")
    try:
        with httpx.Client(timeout=30) as client:
            ready = client.get(f"{server.url}/health/ready")
            assert_problem(ready, 503, "unavailable")
            key = "bl_0123456789abcdef_" + "x" * 43
            response = client.post(events_url(server.url, "ABC"), json={"events": [{"type": "A"}]}, headers=auth(key))
            assert_problem(response, 503, "unavailable")
            assert response.headers["Retry-After"] == "1"
    finally:
        server.stop()


async def test_operations_endpoints(api: str, keys: Keys, client) -> None:
    assert (await client.get(f"{api}/health/live")).json() == {"status": "live"}
    ready = await client.get(f"{api}/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    spec = (await client.get(f"{api}/schema/openapi.json")).json()
    assert {"/v1/bookings/{code}/events", "/v1/bookings/{code}", "/v1/events"} <= spec["paths"].keys()
    assert spec["components"]["schemas"]["AppendIn"]["properties"]["events"]["maxItems"] == 100
    assert not any(path.startswith("/console") for path in spec["paths"])
    code = random_code()
    await client.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                      headers=auth(keys.hotel))
    for _ in range(2):  # two workers: one of them may have answered each read
        assert (await client.get(f"{api}/v1/bookings/{code}", headers=auth(keys.reader))).status_code == 200
        assert (await client.get(f"{api}/v1/bookings/{code}-x/events", headers=auth(keys.reader))).status_code == 404
    assert (await client.get(f"{api}/v1/events", headers=auth(keys.hotel + "x"))).status_code == 401
    metrics = await client.get(f"{api}/metrics")
    assert metrics.status_code == 200 and "ledger_appends_total" in metrics.text
    reads = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.text.splitlines()
             if line.startswith("ledger_reads_total{")}
    assert reads['ledger_reads_total{outcome="ok",route="booking"}'] >= 2
    assert reads['ledger_reads_total{outcome="booking_not_found",route="booking_events"}'] >= 2
    assert reads['ledger_reads_total{outcome="unauthorized",route="feed"}'] >= 1


def test_every_request_is_logged_once_with_its_id_department_and_outcome(database_url: str) -> None:

    server = start_server(database_url, workers=1)
    try:
        key = make_key(database_url, "hotel", "read,write")
        with httpx.Client(timeout=10) as client:
            given = client.get(f"{server.url}/v1/bookings/NOPE-1", headers={**auth(key), "X-Request-ID": "trace-123"})
            # A malformed traceparent is no error: the request starts a trace of its own.
            made = client.post(events_url(server.url, random_code()), headers={**auth(key), "traceparent": "00-x-y-01"},
                               json={"expected_version": 0, "events": [{"type": "A"}]})
        assert given.headers["x-request-id"] == "trace-123"
        assert len(made.headers["x-request-id"]) == 32
        def logged() -> dict[str, dict]:  # each line is written after its answer was sent
            lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
            found = {line["request_id"]: line for line in lines if line.get("event") == "request"}
            return found if {"trace-123", made.headers["x-request-id"]} <= found.keys() else {}

        requests = wait_until(logged, 10, what="both request lines")
        assert requests["trace-123"]["status"] == 404 and requests["trace-123"]["code"] == "booking_not_found"
        assert requests["trace-123"]["department"] == "hotel"
        created = requests[made.headers["x-request-id"]]
        assert created["status"] == 201 and created["method"] == "POST" and created["code"] is None
        assert len(created["trace_id"]) == 32 and created["trace_id"] != requests["trace-123"]["trace_id"]
        assert key not in server.log_path.read_text() and key.split("_", 2)[2] not in server.log_path.read_text()
    finally:
        server.stop()
