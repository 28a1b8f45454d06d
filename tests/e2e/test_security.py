"""Keys at rest, what the API reveals, body limits enforced early, hostile input bound not run."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from urllib.parse import quote, urlparse

import httpx

from devstack.postgres import LocalPostgres
from tests.conftest import random_code, sql
from tests.e2e.conftest import Keys, auth, make_key


def all_keys(keys: Keys) -> list[str]:
    return [keys.hotel, keys.car, keys.pricing, keys.reader, keys.writer]


def test_no_plaintext_key_in_a_database_dump(keys: Keys, postgres: LocalPostgres) -> None:
    dump = subprocess.run(
        [str(postgres.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "ledger", "ledger"],
        check=True, capture_output=True, text=True,
    ).stdout
    for key in all_keys(keys):
        assert key not in dump and key.split("_", 2)[2] not in dump


def test_no_endpoint_reveals_a_key_or_its_hash(api: str, keys: Keys) -> None:
    code = random_code()
    secrets_ = [k for key in all_keys(keys)
                for k in (key, key.split("_", 2)[2], hashlib.sha256(key.encode()).hexdigest())]
    with httpx.Client(timeout=10) as client:
        client.post(f"{api}/v1/bookings/{code}/events", headers=auth(keys.hotel),
                    json={"expected_version": 0, "events": [{"type": "A"}]})
        answers = [
            client.get(f"{api}{path}", headers=auth(keys.reader)).text
            for path in ("/health/live", "/health/ready", "/metrics", "/schema/openapi.json", f"/v1/bookings/{code}",
                         f"/v1/bookings/{code}/events", "/v1/events?limit=1000", "/v1/nothing")
        ]
        answers.append(client.get(f"{api}/v1/events", headers=auth(keys.hotel + "x")).text)  # a near-miss key
    for text in answers:
        for secret in secrets_:
            assert secret not in text


def test_a_body_over_the_limit_is_refused_before_it_is_read(api: str, keys: Keys) -> None:
    url = urlparse(api)
    path = f"/v1/bookings/{random_code()}/events"
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(
            (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {keys.hotel}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
            + b'{"events": ['
        )
        started = time.monotonic()
        answer = conn.recv(4096).decode(errors="replace")  # we never send the other 50 MiB
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "payload_too_large" in answer
    assert "connection: close" in answer.lower()  # the unread rest of the body ends this connection
    assert time.monotonic() - started < 5


HOSTILE = ["'; DROP TABLE events; --", "x' OR '1'='1", "$1", "\\x00", "Robert'); DELETE FROM bookings;--"]


def test_hostile_codes_and_types_are_refused_and_hostile_data_is_stored_verbatim(
    api: str, keys: Keys, database_url: str
) -> None:
    before = sql(database_url, "SELECT count(*) FROM events")
    with httpx.Client(timeout=10) as client:
        for hostile in HOSTILE:
            response = client.post(f"{api}/v1/bookings/{quote(hostile, safe='')}/events", headers=auth(keys.hotel),
                                   json={"expected_version": 0, "events": [{"type": "A"}]})
            assert response.status_code in (404, 422)
            response = client.post(f"{api}/v1/bookings/{random_code()}/events", headers=auth(keys.hotel),
                                   json={"expected_version": 0, "events": [{"type": hostile}]})
            assert response.status_code == 422
        assert sql(database_url, "SELECT count(*) FROM events") == before
        code = random_code()
        data = {hostile: hostile for hostile in HOSTILE}
        created = client.post(f"{api}/v1/bookings/{code}/events", headers=auth(keys.hotel),
                              json={"expected_version": 0, "events": [{"type": "A", "data": data}]})
        assert created.status_code == 201
        read = client.get(f"{api}/v1/bookings/{code}/events", headers=auth(keys.hotel)).json()
        assert read["events"][0]["data"] == data
    assert sql(database_url, "SELECT count(*) FROM events") == before + 1
    assert sql(database_url, "SELECT count(*) FROM bookings") > 0


def test_key_checks_compare_in_constant_time(monkeypatch) -> None:
    import asyncio

    from service.ledger import keys

    calls = []
    monkeypatch.setattr(keys.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or False)

    class Pool:
        def acquire(self, timeout=None):
            return self

        async def __aenter__(self):
            return self

        async def __aexit__(self, *_):
            return False

        async def fetchrow(self, *_):
            return {"id": "x", "department": "hotel", "scopes": ["read"], "key_hash": b"\0" * 32,
                    "created_at": None, "revoked_at": None}

    assert asyncio.run(keys.authenticate(Pool(), f"bl_{'0' * 16}_{'A' * 43}")) is None
    assert len(calls) == 1 and len(calls[0][1]) == 32


def test_a_new_key_works_in_every_worker_at_once(api: str, database_url: str) -> None:
    key = make_key(database_url, "hotel", "read")
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        assert all(client.get(f"{api}/v1/events?limit=1", headers=auth(key)).status_code == 200 for _ in range(10))
