"""Issue 17 over HTTP: what the adversarial review found, each case refused or bounded."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from devstack.processes import wait_until
from service.ledger.reads import MAX_PAGE_BYTES
from tests.conftest import random_code, sql
from tests.e2e.conftest import Keys, Server, auth, cli, start_server

PROBLEM = "application/problem+json"
RFC3339_WITH_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == code


def events_url(api: str, code: str) -> str:
    return f"{api}/v1/bookings/{code}/events"


def create(api: str, key: str, code: str, **event: object) -> httpx.Response:
    return httpx.post(events_url(api, code), json={"expected_version": 0, "events": [{"type": "A", **event}]},
                      headers=auth(key), timeout=30)


# 1. Whole-string patterns.

def test_a_final_newline_never_makes_a_second_booking(api: str, keys: Keys, database_url: str) -> None:
    code = random_code("R")
    assert create(api, keys.hotel, code).status_code == 201
    assert_problem(create(api, keys.car, code + "%0A"), 422, "validation_error")
    assert_problem(httpx.get(f"{api}/v1/bookings/{code}%0A", headers=auth(keys.car)), 422, "validation_error")
    other = random_code("R")
    assert_problem(create(api, keys.car, other, type="Abc\n"), 422, "validation_error")
    assert_problem(create(api, keys.car, other, price={"amount": "5.00\n", "currency": "EUR"}), 422, "validation_error")
    assert sql(database_url, "SELECT count(*) FROM bookings WHERE code LIKE $1", code + "%") == 1
    assert sql(database_url, "SELECT count(*) FROM bookings WHERE code = $1", other) == 0


def test_keys_create_refuses_a_department_with_a_final_newline(database_url: str) -> None:
    department = f"x{uuid.uuid4().hex[:8]}"
    result = cli(database_url, "keys", "create", "--department", department + "\n", check=False)
    assert result.returncode != 0 and "department" in result.stderr
    assert sql(database_url, "SELECT count(*) FROM api_keys WHERE department LIKE $1", department + "%") == 0


# 2. occurred_at at the limits.

@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                                    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_occurred_at_outside_the_range_is_a_clear_422(api: str, keys: Keys, database_url: str, moment: str) -> None:
    code = random_code()
    response = create(api, keys.hotel, code, occurred_at=moment)
    assert_problem(response, 422, "validation_error")
    assert "occurred_at" in response.json()["detail"]
    assert sql(database_url, "SELECT count(*) FROM bookings WHERE code = $1", code) == 0


@pytest.mark.parametrize(("moment", "stored"), [
    ("0001-01-01T00:00:00.000001Z", "0001-01-01T00:00:00.000001Z"),
    ("9999-12-31T23:59:59.999998Z", "9999-12-31T23:59:59.999998Z"),
    ("0001-01-01T14:00:00.000001+14:00", "0001-01-01T00:00:00.000001Z"),
    ("9999-12-31T09:59:59.999998-14:00", "9999-12-31T23:59:59.999998Z"),
    ("2026-11-26T10:00:00.1234565Z", "2026-11-26T10:00:00.123457Z"),  # rounded to the microsecond
])
def test_occurred_at_at_the_limits_comes_back_as_rfc3339_with_offset(api: str, keys: Keys, moment: str,
                                                                     stored: str) -> None:
    code = random_code()
    assert create(api, keys.hotel, code, occurred_at=moment).status_code == 201
    event = httpx.get(events_url(api, code), headers=auth(keys.hotel)).json()["events"][0]
    assert RFC3339_WITH_OFFSET.fullmatch(event["occurred_at"]), event["occurred_at"]
    assert event["occurred_at"] == stored


# 3. Pages bounded by bytes.

def test_pages_of_large_events_end_early_with_their_cursor(api: str, keys: Keys) -> None:
    code = random_code()
    blob = "x" * (250 * 1024)
    count = 24  # about 6 MB together, more than one page
    assert create(api, keys.hotel, code, data={"blob": blob}).status_code == 201
    for _ in range(count - 1):
        response = httpx.post(events_url(api, code), json={"events": [{"type": "A", "data": {"blob": blob}}]},
                              headers=auth(keys.hotel), timeout=30)
        assert response.status_code == 201
    bound = MAX_PAGE_BYTES + 257 * 1024 + 1024  # the cap, plus the one event that crosses it

    versions: list[int] = []
    from_version: int | None = 1
    while from_version is not None:
        page = httpx.get(events_url(api, code), params={"from_version": from_version, "limit": 1000},
                         headers=auth(keys.hotel), timeout=30)
        assert page.status_code == 200 and len(page.content) <= bound, len(page.content)
        versions += [e["version"] for e in page.json()["events"]]
        from_version = page.json()["next_from_version"]
    assert versions == list(range(1, count + 1))
    assert len(versions) > 1 and versions.index(count) > 0

    first = httpx.get(events_url(api, code), headers=auth(keys.hotel)).json()["events"][0]["position"]
    seen: list[int] = []
    after = first - 1
    pages = 0
    while len(seen) < count:
        page = httpx.get(f"{api}/v1/events", params={"after": after, "limit": 1000}, headers=auth(keys.hotel),
                         timeout=30)
        assert page.status_code == 200 and len(page.content) <= bound, len(page.content)
        body = page.json()
        seen += [e["version"] for e in body["events"] if e["booking_code"] == code]
        after = body["next_after"]
        pages += 1
    assert seen == list(range(1, count + 1)) and pages > 1


# 4. A client that stalls or disconnects mid-body.

@pytest.fixture(scope="module")
def slow_body_server(database_url: str) -> Iterator[Server]:
    server = start_server(database_url, workers=1, LEDGER_HTTP_BODY_TIMEOUT="2")
    try:
        yield server
    finally:
        server.stop()


def _partial_request(url: str, key: str, sent: bytes, length: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /v1/bookings/{random_code()}/events HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + sent)
    return sock


def test_a_stalled_body_gets_408_and_a_dropped_one_is_no_server_error(slow_body_server: Server, keys: Keys) -> None:
    url = slow_body_server.url
    stalled = _partial_request(url, keys.hotel, b'{"events": [', 200)
    started = time.monotonic()
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = stalled.recv(65536)
        if not chunk:
            break
        answer += chunk
    stalled.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer and b'"code":"request_timeout"' in answer
    assert 1.5 < time.monotonic() - started < 10

    for _ in range(3):
        _partial_request(url, keys.hotel, b'{"events": [', 200).close()

    def metrics() -> str:
        return httpx.get(url + "/metrics").text

    wait_until(lambda: 'outcome="client_disconnected"' in metrics(), timeout=30, what="the disconnects counted")
    text = metrics()
    assert 'outcome="internal_error"' not in text and "http_500" not in text
    # Neither the stall nor the disconnects entered the append duration: no body, no work.
    assert re.search(r"^ledger_append_duration_seconds_count 0\.0$", text, re.M), text
    log = slow_body_server.log_path.read_text()
    assert "unhandled error" not in log and "Traceback" not in log and "status=500" not in log


def test_the_append_duration_starts_after_the_body(slow_body_server: Server, keys: Keys) -> None:
    url = slow_body_server.url
    body = msgspec.json.encode({"expected_version": 0, "events": [{"type": "A"}]})
    sock = _partial_request(url, keys.hotel, body[:5], len(body))
    time.sleep(1.2)  # slow, but within the 2 s body deadline
    sock.sendall(body[5:])
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    text = httpx.get(url + "/metrics").text
    total = float(re.search(r"^ledger_append_duration_seconds_sum (\S+)$", text, re.M).group(1))
    assert total < 1.0, total


# 8. Authentication first.

@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/bookings/-x/events", {"events": [{"type": "A"}]}),
    ("POST", "/v1/bookings/R1/events", {"events": "not a list"}),
    ("GET", "/v1/events?limit=0", None),
    ("GET", "/v1/bookings/-x", None),
    ("GET", "/v1/bookings/R1/events?from_version=0", None),
])
@pytest.mark.parametrize("key", [None, "bl_0000000000000000_" + "A" * 43])
def test_a_request_without_a_valid_key_gets_401_whatever_else_is_wrong(
    api: str, method: str, path: str, body: dict | None, key: str | None
) -> None:
    headers = auth(key) if key else {}
    response = httpx.request(method, api + path, json=body, headers=headers)
    assert_problem(response, 401, "unauthorized")


# 9. HEAD where GET works.

def test_head_is_answered_where_get_is(api: str, keys: Keys) -> None:
    code = random_code()
    assert create(api, keys.hotel, code).status_code == 201
    for path in (f"/v1/bookings/{code}", f"/v1/bookings/{code}/events", "/v1/events?limit=1", "/health/live"):
        got = httpx.get(api + path, headers=auth(keys.hotel))
        head = httpx.head(api + path, headers=auth(keys.hotel))
        assert (head.status_code, head.content) == (200, b""), (path, head.status_code)
        assert head.headers["content-type"] == got.headers["content-type"]
    assert httpx.head(f"{api}/v1/bookings/{code}").status_code == 401


# 10. Lenient parsing refused.

def test_duplicate_keys_encodings_charsets_and_two_authorizations_are_refused(
    api: str, keys: Keys, database_url: str
) -> None:
    code = random_code()
    duplicate = b'{"expected_version":5,"expected_version":0,"events":[{"type":"A"}]}'
    response = httpx.post(events_url(api, code), content=duplicate,
                          headers={**auth(keys.hotel), "Content-Type": "application/json"})
    assert_problem(response, 422, "validation_error")
    body = b'{"expected_version":0,"events":[{"type":"A"}]}'
    for headers in ({"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    {"Content-Type": "application/json; charset=utf-16"},
                    {"Content-Type": "application/json;charset=latin-1"}):
        response = httpx.post(events_url(api, code), content=body, headers={**auth(keys.hotel), **headers})
        assert_problem(response, 415, "unsupported_media_type")
    two = [("Authorization", f"Bearer {keys.hotel}"), ("Authorization", "Bearer bl_nothing"),
           ("Content-Type", "application/json")]
    assert_problem(httpx.post(events_url(api, code), content=body, headers=two), 401, "unauthorized")
    assert sql(database_url, "SELECT count(*) FROM bookings WHERE code = $1", code) == 0
    ok = httpx.post(events_url(api, code), content=body,
                    headers={**auth(keys.hotel), "Content-Type": "application/json; charset=UTF-8",
                             "Content-Encoding": "identity"})
    assert ok.status_code == 201, ok.text


# 11. The data limit on compact JSON.

def test_the_data_limit_is_the_compact_json_of_the_request(api: str, keys: Keys) -> None:
    many_keys = {f"k{i:05d}": i % 10 for i in range(22000)}
    assert len(msgspec.json.encode(many_keys)) == 242_001
    assert create(api, keys.hotel, random_code(), data=many_keys).status_code == 201
    exact = {"blob": ""}
    exact["blob"] = "x" * (256 * 1024 - len(msgspec.json.encode(exact)))
    assert create(api, keys.hotel, random_code(), data=exact).status_code == 201
    exact["blob"] += "x"
    assert_problem(create(api, keys.hotel, random_code(), data=exact), 422, "validation_error")
    assert_problem(create(api, keys.hotel, random_code(), data={"x": [1e308] * 1000}), 422, "validation_error")
    one = create(api, keys.hotel, random_code(), data={"n": 1e308})  # counted, and carried, as 309 digits
    assert one.status_code == 201 and one.json()["events"][0]["data"] == {"n": 10**308}


# 14. No caching, no sniffing.

def test_answers_carry_no_store_and_nosniff(api: str, keys: Keys) -> None:
    code = random_code()
    for response in (create(api, keys.hotel, code), httpx.get(f"{api}/v1/bookings/{code}", headers=auth(keys.hotel)),
                     httpx.get(f"{api}/v1/bookings/{code}"), httpx.get(f"{api}/v1/nothing-here")):
        assert response.headers["cache-control"] == "no-store", response.status_code
        assert response.headers["x-content-type-options"] == "nosniff"


# 9. What the HTTP server answers itself, as docs/api.md lists it (granian offers no hook to change it).

@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    (b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET /health/live?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
])
def test_the_http_server_s_own_answers_are_the_documented_ones(api: str, request_bytes: bytes, status: int) -> None:
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert b"content-length: 0" in answer.lower()
