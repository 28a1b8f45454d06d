"""GET /v1/events/stream: Server-Sent Events with the feed's promise, resume, filters, caps, drops."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from devstack.harness import APPEND_SQL, run_sql
from devstack.harness import database_url as other_database
from devstack.postgres import LocalPostgres
from devstack.processes import wait_until
from migrations.runner import upgrade
from tests.conftest import random_code
from tests.e2e.conftest import Server, auth, cli, make_key, start_server
from tests.e2e.test_http import assert_problem, events_url, priced

HEARTBEAT = 1


@pytest.fixture(scope="module")
def stream_api(database_url: str) -> Iterator[Server]:
    """One worker, so that the per-process caps are exact; small caps, a fast heartbeat."""
    server = start_server(database_url, workers=1, LEDGER_STREAM_HEARTBEAT_SECONDS=str(HEARTBEAT),
                          LEDGER_STREAM_MAX_PER_KEY="2", LEDGER_STREAM_MAX="4", LEDGER_STREAM_SEND_TIMEOUT="2",
                          LEDGER_RATE_LIMIT="0")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reader(database_url: str) -> str:
    """A read key for requests that never open a stream (so it never meets the per-key cap)."""
    return make_key(database_url, department(), "read")


@dataclass
class Sse:
    """What one stream delivered: events as (id, data) and comment lines."""

    events: list[tuple[int, dict]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    content_type: str = ""
    ended: bool = False

    @property
    def ids(self) -> list[int]:
        return [i for i, _ in self.events]


async def read_stream(url: str, key: str, into: Sse, headers: dict[str, str] | None = None, **params: str) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client, client.stream(
            "GET", f"{url}/v1/events/stream", params=params, headers={**auth(key), **(headers or {})}) as answer:
        into.status, into.content_type = answer.status_code, answer.headers.get("content-type", "")
        if answer.status_code != 200:
            await answer.aread()
            return
        event_id, data = None, None
        async for line in answer.aiter_lines():
            if line.startswith(":"):
                into.comments.append(line[1:].strip())
            elif line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data = httpx.Response(200, content=line[6:]).json()
            elif line == "" and data is not None:
                into.events.append((event_id, data))
                event_id, data = None, None
    into.ended = True


@pytest.fixture
async def streams() -> AsyncIterator[list[asyncio.Task]]:
    tasks: list[asyncio.Task] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def open_stream(tasks: list[asyncio.Task], url: str, key: str, headers: dict[str, str] | None = None,
                **params: str) -> Sse:
    sse = Sse()
    tasks.append(asyncio.create_task(read_stream(url, key, sse, headers, **params)))
    return sse


async def until(check, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def department() -> str:
    return f"dept-{uuid.uuid4().hex[:8]}"


async def create(client: httpx.AsyncClient, url: str, key: str, n: int = 1, **event) -> list[dict]:
    answer = await client.post(events_url(url, random_code("SSE")), headers=auth(key), json={
        "expected_version": 0, "events": [priced(**event) for _ in range(n)]})
    assert answer.status_code == 201, answer.text
    return answer.json()["events"]


async def test_concurrent_writers_then_disconnect_and_resume(stream_api: Server, database_url: str,
                                                             streams) -> None:
    dept = department()
    key = make_key(database_url, dept, "read,write")
    url = stream_api.url
    first = open_stream(streams, url, key, department=dept)
    await until(lambda: first.comments, what="the stream to open")
    assert first.status == 200 and first.content_type.startswith("text/event-stream")
    written: list[dict] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async def writer() -> None:
            for _ in range(10):
                written.extend(await create(client, url, key, n=2))

        await asyncio.gather(*(writer() for _ in range(6)))
        await until(lambda: len(first.events) >= len(written), what="every event on the stream")
        assert sorted(first.ids) == first.ids and len(set(first.ids)) == len(first.ids)
        assert {e["event_id"] for _, e in first.events} == {e["event_id"] for e in written}
        assert all(i == e["position"] for i, e in first.events)

        # Disconnect; more commits meanwhile; resume with Last-Event-ID (it wins over after).
        streams[-1].cancel()
        last = first.ids[-1]
        later = [e for _ in range(5) for e in await create(client, url, key)]
        resumed = open_stream(streams, url, key, headers={"Last-Event-ID": str(last)}, after="0", department=dept)
        await until(lambda: len(resumed.events) >= len(later), what="the resumed stream")
        more = await create(client, url, key)
        await until(lambda: len(resumed.events) >= len(later) + 1, what="a live event after resuming")
        assert [e["event_id"] for _, e in resumed.events] == [e["event_id"] for e in sorted(
            later + more, key=lambda e: e["position"])]


async def test_a_transaction_held_open_is_not_skipped(stream_api: Server, database_url: str, streams) -> None:
    dept = department()
    key = make_key(database_url, dept, "read,write")
    sse = open_stream(streams, stream_api.url, key, department=dept)
    await until(lambda: sse.comments, what="the stream to open")
    held = await asyncpg.connect(database_url)
    try:
        transaction = held.transaction()
        await transaction.start()
        held_rows = await held.fetch(APPEND_SQL, random_code("HELD"), dept, False, 0, [uuid.uuid4()], ["Held"],
                                     [None], [None], [None], [None])
        async with httpx.AsyncClient(timeout=30) as client:
            later = await create(client, stream_api.url, key)
        assert later[0]["position"] > held_rows[0]["position"]
        await asyncio.sleep(2 * HEARTBEAT + 0.5)  # the hub has passed over the feed several times
        assert sse.events == []  # held back behind the open transaction, not passed
        await transaction.commit()
    finally:
        await held.close()
    await until(lambda: len(sse.events) == 2, what="both events once the transaction committed")
    assert [e["event_id"] for _, e in sse.events] == [str(held_rows[0]["event_id"]), later[0]["event_id"]]


async def test_filters(stream_api: Server, database_url: str, streams) -> None:
    dept = department()
    key = make_key(database_url, dept, "read,write")
    async with httpx.AsyncClient(timeout=30) as client:
        mine = await create(client, stream_api.url, key)
        by_code = open_stream(streams, stream_api.url, key, booking_code=mine[0]["booking_code"])
        by_type = open_stream(streams, stream_api.url, key, department=dept, type="Special")
        await until(lambda: by_code.comments and by_type.comments, what="the streams to open")
        special = await create(client, stream_api.url, key, type="Special")
        await until(lambda: by_code.events and by_type.events, what="the filtered events")
        await asyncio.sleep(0.5)
    assert [e["event_id"] for _, e in by_code.events] == [mine[0]["event_id"]]
    assert [e["event_id"] for _, e in by_type.events] == [special[0]["event_id"]]
    async with httpx.AsyncClient(timeout=30) as client:
        bad = await client.get(f"{stream_api.url}/v1/events/stream", params={"booking_code": "bad code"},
                               headers=auth(key))
        assert_problem(bad, 422, "validation_error")
        bad = await client.get(f"{stream_api.url}/v1/events/stream", headers={**auth(key), "Last-Event-ID": "x"})
        assert_problem(bad, 422, "validation_error")
        assert_problem(await client.get(f"{stream_api.url}/v1/events/stream", params={"after": "-1"}), 401,
                       "unauthorized")


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb2", b"\xd9\xa1", b"9" * 5000, b"9000000000000000001",
                                   b"-1", b"+1", b"1.0", b"1e0", b"0x10", b"1 2"])
async def test_a_last_event_id_that_is_not_a_position_is_a_422(stream_api: Server, reader: str, value: bytes) -> None:
    logged = len(stream_api.log())
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{stream_api.url}/v1/events/stream",
                                  headers={**auth(reader), "Last-Event-ID": value})
    assert_problem(answer, 422, "validation_error")
    assert "Traceback" not in stream_api.log()[logged:]


@pytest.mark.parametrize("name", ["department", "type", "booking_code"])
async def test_a_filter_with_a_final_newline_is_a_422(stream_api: Server, reader: str, name: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{stream_api.url}/v1/events/stream?{name}=advhotel%0A", headers=auth(reader))
    assert_problem(answer, 422, "validation_error")


async def test_caps_per_key_and_per_process(stream_api: Server, database_url: str, streams) -> None:
    one, two = (make_key(database_url, department(), "read") for _ in range(2))
    opened = [open_stream(streams, stream_api.url, one, department="nobody") for _ in range(2)]
    await until(lambda: all(s.comments for s in opened), what="two streams")
    over = Sse()
    await read_stream(stream_api.url, one, over, department="nobody")
    assert over.status == 429
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{stream_api.url}/v1/events/stream", headers=auth(one))
        assert_problem(answer, 429, "rate_limited")
        assert "Retry-After" in answer.headers
        opened += [open_stream(streams, stream_api.url, two, department="nobody") for _ in range(2)]
        await until(lambda: all(s.comments for s in opened), what="four streams")
        third = make_key(database_url, department(), "read")
        assert_problem(await client.get(f"{stream_api.url}/v1/events/stream", headers=auth(third)), 429,
                       "rate_limited")  # the process's cap
        streams[0].cancel()

        async def admitted() -> bool:
            probe = Sse()
            task = asyncio.create_task(read_stream(stream_api.url, third, probe, department="nobody"))
            await until(lambda: probe.status is not None, what="an answer")
            task.cancel()
            return probe.status == 200

        deadline = time.monotonic() + 20
        while not await admitted():  # a closed stream frees its place
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)


async def test_heartbeat_and_a_revoked_key_ends_the_stream(stream_api: Server, database_url: str, streams) -> None:
    key = make_key(database_url, department(), "read")
    sse = open_stream(streams, stream_api.url, key, department="nobody")
    await until(lambda: sse.comments.count("keep-alive") >= 2, timeout=4 * HEARTBEAT + 5, what="two heartbeats")
    key_id = key.split("_")[1]
    cli(database_url, "keys", "revoke", key_id)
    await until(lambda: sse.ended, timeout=15, what="the stream to end")
    assert "revoked" in sse.comments[-1]


def test_a_slow_consumer_is_dropped_and_memory_stays_bounded(stream_api: Server, database_url: str) -> None:
    dept = department()
    key = make_key(database_url, dept, "read,write")
    host, port = stream_api.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/events/stream?department={dept} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {key}\r\n\r\n".encode())
    time.sleep(0.5)
    blob = "x" * 200_000
    with httpx.Client(timeout=30) as client:
        for _ in range(60):  # 12 MB of events, far more than the transport buffers
            answer = client.post(events_url(stream_api.url, random_code("SLOW")), headers=auth(key), json={
                "expected_version": 0, "events": [priced(data={"blob": blob})]})
            assert answer.status_code == 201, answer.text
    pid = stream_api.pids()[-1]
    rss_mb = int(next(line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")).split()[1]) / 1024
    wait_until(lambda: "too_slow" in stream_api.log() or _dropped(stream_api), timeout=30, what="the drop")
    received = b""
    sock.settimeout(10)
    while not received.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sock.close()
    assert b": dropped: this client did not read" in received and b"Last-Event-ID" in received
    assert len(received) < 8_000_000  # what the transport held, not all 12 MB
    assert rss_mb < 300


def _dropped(server: Server) -> bool:
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    return 'ledger_event_streams_ended_total{reason="too_slow"}' in metrics


# A ledger of its own whose whole feed is a backlog: a stream from after=0 has far more to catch
# up on than any buffer holds, as on a large production ledger.
BACKLOG_APPENDS, BACKLOG_PER_APPEND, BACKLOG_DATA_CHARS = 200, 100, 2000  # 20,000 events, about 48 MB
_FILL_BACKLOG = f"""
DO $fill$
BEGIN
    FOR i IN 1..{BACKLOG_APPENDS} LOOP
        PERFORM ledger_append(
            'BACKLOG-' || i, 'backlog', false, 0,
            (SELECT array_agg(gen_random_uuid()) FROM generate_series(1, {BACKLOG_PER_APPEND})),
            array_fill('PriceChanged'::text, ARRAY[{BACKLOG_PER_APPEND}]),
            array_fill(10.00::numeric, ARRAY[{BACKLOG_PER_APPEND}]),
            array_fill('EUR'::text, ARRAY[{BACKLOG_PER_APPEND}]),
            array_fill(jsonb_build_object('note', repeat('n', {BACKLOG_DATA_CHARS})), ARRAY[{BACKLOG_PER_APPEND}]),
            array_fill(NULL::timestamptz, ARRAY[{BACKLOG_PER_APPEND}]));
        COMMIT;  -- the append function must be the first write of its transaction
    END LOOP;
END
$fill$
"""
BACKLOG_BYTES = BACKLOG_APPENDS * BACKLOG_PER_APPEND * (BACKLOG_DATA_CHARS + 400)  # about, as SSE


@pytest.fixture(scope="module")
def backlog_url(postgres: LocalPostgres) -> str:
    """A database of its own (other tests' streams from 0 need not wade through it), filled."""
    name = f"stream_backlog_{uuid.uuid4().hex[:8]}"
    run_sql(postgres.url, f'CREATE DATABASE "{name}"')
    url = other_database(postgres.url, name)
    upgrade(url)
    run_sql(url, _FILL_BACKLOG)
    return url


def raw_stream(server: Server, key: str, receive_buffer: int, **params: str) -> socket.socket:
    """A GET of the stream on a socket of its own, whose receive buffer the test sets (and so the
    kernel does not grow it): what the client holds is known, the rest waits in the server."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    query = "&".join(f"{k}={v}" for k, v in params.items())
    sock.sendall(f"GET /v1/events/stream?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    return sock


def test_a_revoked_key_ends_its_stream_while_it_catches_up(backlog_url: str) -> None:
    server = start_server(backlog_url, workers=1, LEDGER_RATE_LIMIT="0")
    try:
        key = make_key(backlog_url, department(), "read")
        rate = 2_000_000  # bytes/s: a slow reader, who would need BACKLOG_BYTES / rate (about 24 s) to catch up
        sock = raw_stream(server, key, 256 * 1024, after="0")
        sock.settimeout(30)
        received = 0
        tail = b""
        revoked_at: float | None = None
        received_at_revoke = 0
        started = time.monotonic()
        while not tail.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += len(chunk)
            tail = (tail + chunk)[-4096:]
            if revoked_at is None and received >= 2_000_000:
                cli(backlog_url, "keys", "revoke", key.split("_")[1])
                revoked_at, received_at_revoke = time.monotonic(), received
            time.sleep(max(0.0, started + received / rate - time.monotonic()))
        ended_at = time.monotonic()
        sock.close()
    finally:
        server.stop()
    assert revoked_at is not None
    assert b": end: the API key of this stream is revoked" in tail, tail[-300:]
    after_revoke = received - received_at_revoke
    # What was already on its way (the transport's buffers) still arrives, at the reader's pace;
    # nothing more is read from the backlog once the key is revoked.
    assert after_revoke < BACKLOG_BYTES / 3, (after_revoke, BACKLOG_BYTES)
    assert ended_at - revoked_at < 8, (ended_at - revoked_at, after_revoke)


def _rss_bytes(server: Server) -> int:
    """Resident memory of the API's worker processes (not granian's parent)."""
    total = 0
    for pid in server.pids()[1:]:
        with open(f"/proc/{pid}/status") as status:
            total += next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    return total


def _settled(server: Server, timeout: float = 90) -> int:
    """RSS once it has stopped growing (the streams have filled what the transport takes)."""
    samples: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples.append(_rss_bytes(server))
        recent = samples[-8:]
        if len(samples) >= 12 and max(recent) - min(recent) < 1_000_000:
            return max(recent)
        time.sleep(0.5)
    raise TimeoutError(f"the API's memory did not settle within {timeout} s: {samples[-8:]}")


NEVER_READING = 8


def test_a_never_reading_stream_holds_bounded_memory(backlog_url: str) -> None:
    server = start_server(backlog_url, workers=1, LEDGER_RATE_LIMIT="0", LEDGER_STREAM_SEND_TIMEOUT="300",
                          LEDGER_STREAM_MAX_PER_KEY=str(NEVER_READING + 1))
    socks: list[socket.socket] = []
    try:
        key = make_key(backlog_url, department(), "read")
        with httpx.Client(timeout=30) as client, client.stream(
                "GET", f"{server.url}/v1/events/stream", params={"after": "0"}, headers=auth(key)) as warm:
            read = 0
            for chunk in warm.iter_raw():  # one stream's code paths and buffers, before the baseline
                read += len(chunk)
                if read > 10_000_000:
                    break
        before = _settled(server)
        socks = [raw_stream(server, key, 4096, after="0") for _ in range(NEVER_READING)]
        wait_until(lambda: f"ledger_event_streams_open {float(NEVER_READING)}" in httpx.get(
            f"{server.url}/metrics", timeout=10).text, timeout=30, what="the streams to open")
        after = _settled(server)
    finally:
        for sock in socks:
            sock.close()
        server.stop()
    per_stream = (after - before) / NEVER_READING
    print(f"\nRSS per never-reading stream: {per_stream / 1e6:.1f} MB ({before / 1e6:.0f} -> {after / 1e6:.0f} MB "
          f"for {NEVER_READING} streams)")
    assert per_stream < 3_000_000, per_stream
