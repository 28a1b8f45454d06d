"""booking_ledger_client against the real API, relay, sink, broker and DynamoDB Local."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from booking_ledger_client import (
    AppendResult,
    AsyncLedgerClient,
    BookingCodeTaken,
    BookingNotFound,
    EventIdConflict,
    Forbidden,
    LedgerClient,
    LedgerError,
    Money,
    NewEvent,
    NotOwner,
    RateLimited,
    ReadResult,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    VersionConflict,
)

from devstack.harness import Stack
from devstack.processes import wait_until
from tests import scratch
from tests.client.conftest import ClientStack
from tests.conftest import free_port, random_code
from tests.e2e.conftest import make_key


def priced(amount: str, **data: object) -> NewEvent:
    return NewEvent("BookingPriced", price=Money(amount, "EUR"), data=data or None)


def test_every_error_code_maps_to_its_exception(stack: ClientStack) -> None:
    code = random_code("CE")
    with LedgerClient(stack.url, stack.hotel, retry_seconds=0) as hotel, \
            LedgerClient(stack.url, stack.car, retry_seconds=0) as car, \
            LedgerClient(stack.url, stack.reader, retry_seconds=0) as reader, \
            LedgerClient(stack.url, "not-a-key", retry_seconds=0) as stranger:
        created = hotel.create(code, [priced("120.00", reason="initial quote")])
        assert (created.version, created.replayed) == (1, False)

        with pytest.raises(BookingCodeTaken) as taken:
            car.create(code, [priced("99.00")])
        assert taken.value.department == "hotel"
        with pytest.raises(VersionConflict) as conflict:
            hotel.append(code, [priced("100.00")], expected_version=5)
        assert conflict.value.current_version == 1
        with pytest.raises(NotOwner) as not_owner:
            car.append(code, [priced("1.00")])
        assert not_owner.value.department == "hotel"
        with pytest.raises(BookingNotFound):
            hotel.booking(random_code("CE"))
        with pytest.raises(BookingNotFound):
            hotel.append(random_code("CE"), [priced("1.00")])
        with pytest.raises(EventIdConflict) as id_conflict:
            hotel.append(code, [NewEvent("BookingPriced", event_id=created.events[0].event_id, data={"other": 1})])
        assert id_conflict.value.event_ids == [str(created.events[0].event_id)]
        with pytest.raises(Unauthorized):
            stranger.booking(code)
        with pytest.raises(Forbidden):
            reader.append(code, [priced("1.00")])
        with pytest.raises(ValidationFailed):
            hotel.append(code, [NewEvent("9-not-a-type")])
        with pytest.raises(ValidationFailed):
            hotel.append(code, [priced("1.001")])  # EUR has two minor digits

        # Each carries the problem+json body, and all are LedgerErrors.
        assert taken.value.problem["code"] == "booking_code_taken"
        assert taken.value.status == 409 and isinstance(taken.value, LedgerError)
        assert hotel.booking(code).version == 1  # nothing of the refused appends was written

    # Nobody listening: connection refused, retried within retry_seconds, then Unavailable.
    started = time.monotonic()
    with LedgerClient(f"http://127.0.0.1:{free_port()}", stack.hotel, retry_seconds=0.5) as nowhere:
        with pytest.raises(Unavailable) as unavailable:
            nowhere.booking(code)
    assert 0.1 < time.monotonic() - started <= 0.5 + 0.5  # it retried, and gave up within retry_seconds
    assert isinstance(unavailable.value.__cause__, httpx.ConnectError)


def test_a_create_whose_answer_was_lost_is_stored_once_and_succeeds(stack: ClientStack, proxy_factory) -> None:
    code = random_code("LOST")
    proxy = proxy_factory(stack.url, "drop_answer")
    with LedgerClient(proxy.url, stack.hotel, retry_seconds=10) as hotel:
        result = hotel.create(code, [priced("120.00", reason="initial quote")])
        assert proxy.dropped.is_set() and proxy.connections == 2  # the first answer never arrived
        assert (result.version, result.replayed) == (1, True)
        stored = hotel.events(code)
        assert [e.event_id for e in stored.events] == [result.events[0].event_id]
        # The same for an append at a version: one event, success.
        proxy2 = proxy_factory(stack.url, "drop_answer")
        with LedgerClient(proxy2.url, stack.hotel, retry_seconds=10) as hotel2:
            appended = hotel2.append(code, [priced("99.50")], expected_version=1)
        assert proxy2.dropped.is_set() and appended.version == 2
        assert [e.version for e in hotel.events(code).events] == [1, 2]


def test_a_retried_create_that_lost_to_another_request_is_refused(stack: ClientStack, proxy_factory) -> None:
    """Not every 409 after a lost try is our own commit: here the code went to another request of
    the same department while ours was lost unsent, so the client must refuse, not claim success."""
    code = random_code("RACE")
    with LedgerClient(stack.url, stack.hotel) as other:
        proxy = proxy_factory(stack.url, "drop_request", lambda: other.create(code, [priced("1.00")]))
        with LedgerClient(proxy.url, stack.hotel, retry_seconds=10) as hotel:
            with pytest.raises(BookingCodeTaken) as taken:
                hotel.create(code, [priced("2.00")])
        assert proxy.dropped.is_set() and taken.value.department == "hotel"
        assert [e.price for e in other.events(code).events] == [Money("1.00", "EUR")]


def test_retry_after_is_honoured(stack: ClientStack) -> None:
    limited = stack.start_api(LEDGER_RATE_LIMIT="1")
    code = random_code("RATE")

    def rate_limited_reads() -> float:
        text = httpx.get(limited.url + "/metrics", timeout=5).text
        lines = [line for line in text.splitlines()
                 if line.startswith("ledger_reads_total{") and 'outcome="rate_limited"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    with LedgerClient(limited.url, stack.hotel, retry_seconds=10) as hotel:
        hotel.create(code, [priced("10.00")])  # the one token of this second
        for _ in range(5):  # on a busy machine the next second (and its token) may come first: read again
            before = rate_limited_reads()
            started = time.monotonic()
            assert hotel.booking(code).version == 1  # 429 with Retry-After: 1, then a success
            elapsed = time.monotonic() - started
            refusals = rate_limited_reads() - before
            if refusals:
                break
    assert refusals == 1  # one wait of Retry-After, not a burst of early tries
    assert elapsed >= 1.0, f"the retry came after {elapsed:.2f}s, before Retry-After"

    with LedgerClient(limited.url, stack.hotel, retry_seconds=0.2) as impatient:
        with pytest.raises(RateLimited) as refused:  # Retry-After (1 s) is beyond retry_seconds
            for _ in range(3):  # at one request a second, one of these is over the rate
                impatient.booking(code)
    assert refused.value.retry_after == 1 and refused.value.status == 429


def test_read_your_writes_on_the_read_store(stack: ClientStack) -> None:
    code = random_code("RYW")
    with LedgerClient(stack.url, stack.hotel, dynamodb_table=stack.table, dynamodb_endpoint=stack.dynamodb_endpoint,
                      region="eu-west-1") as hotel:
        hotel.create(code, [NewEvent("BookingPriced", price=Money.of(Decimal("1234567890.12"), "EUR"),
                                     data={"nested": {"n": [1, 2.5, "x"]}}, occurred_at="2026-11-26T10:00:00Z")])
        first = hotel.wait_for_read_store(code, 1, timeout=30)
        assert first.source == "dynamodb" and first.version == 1

        behind: list[ReadResult] = []

        def while_the_sink_is_down() -> None:
            appended = hotel.append(code, [priced("0.10"), NewEvent("Note", data={"text": "late"})],
                                    expected_version=1)
            assert appended.version == 3
            behind.append(hotel.read_events(code, min_version=appended.version))
            assert behind[0].source == "ledger" and behind[0].version == 3
            assert hotel.read_events(code).source == "dynamodb"  # without min_version: the store only
            assert hotel.read_events(code).version == 1

        stack.restart_sink(while_the_sink_is_down)
        caught_up = hotel.wait_for_read_store(code, 3, timeout=60)
        again = hotel.read_events(code, min_version=3)
        assert again.source == "dynamodb" and caught_up.source == "dynamodb"
        assert again.events == behind[0].events == hotel.events(code).events  # the same, field by field
        assert again.events[0].price == Money("1234567890.12", "EUR")
        assert again.events[0].data == {"nested": {"n": [1, 2.5, "x"]}}
        assert again.events[1].price is not None and again.events[1].price.amount == "0.10"

    with LedgerClient(stack.url, stack.hotel) as no_table:  # no table configured: the ledger answers
        assert no_table.read_events(code).source == "ledger"


def test_the_async_client_does_the_same(stack: ClientStack, proxy_factory) -> None:
    proxy = proxy_factory(stack.url, "drop_answer")

    async def run() -> None:
        code = random_code("ASYNC")
        async with AsyncLedgerClient(proxy.url, stack.hotel, dynamodb_table=stack.table,
                                     dynamodb_endpoint=stack.dynamodb_endpoint, region="eu-west-1",
                                     retry_seconds=10) as hotel, \
                AsyncLedgerClient(stack.url, stack.car, retry_seconds=0) as car:
            created = await hotel.create(code, [priced("120.00")])
            assert proxy.dropped.is_set() and (created.version, created.replayed) == (1, True)
            with pytest.raises(BookingCodeTaken) as taken:
                await car.create(code, [priced("1.00")])
            assert taken.value.department == "hotel"
            with pytest.raises(VersionConflict) as conflict:
                await hotel.append(code, [priced("2.00")], expected_version=0 + 7)
            assert conflict.value.current_version == 1
            appended = await hotel.append(code, [priced("3.00")], expected_version=1)
            read = await hotel.read_events(code, min_version=appended.version)
            assert read.version == 2 and read.source in ("ledger", "dynamodb")
            caught_up = await hotel.wait_for_read_store(code, 2, timeout=60)
            assert caught_up.source == "dynamodb" and caught_up.events == (await hotel.events(code)).events
            assert (await hotel.booking(code)).price == Money("3.00", "EUR")
            pages = [page async for page in hotel.feed(after=created.events[0].position - 1, limit=1)]
            assert [e.event_id for e in pages[0].events] == [created.events[0].event_id]

    asyncio.run(run())


def test_the_feed_iterator_misses_nothing_while_writers_run(stack: ClientStack) -> None:
    with LedgerClient(stack.url, stack.hotel) as client:
        start = client.create(random_code("FEED"), [priced("1.00")]).events[0].position
    written: list[uuid.UUID] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer() -> None:
        with LedgerClient(stack.url, stack.hotel) as client:
            while not stop.is_set():
                result = client.create(random_code("FEED"), [priced("1.00"), priced("2.00")])
                with lock:
                    written.extend(e.event_id for e in result.events)

    writers = [threading.Thread(target=writer) for _ in range(4)]
    for thread in writers:
        thread.start()
    seen: list[uuid.UUID] = []
    positions: list[int] = []
    try:
        with LedgerClient(stack.url, stack.reader) as reader:
            deadline = time.monotonic() + 4
            for page in reader.feed(after=start, limit=7, follow=True, poll_interval=0.05):
                seen += [e.event_id for e in page.events]
                positions += [e.position for e in page.events]
                if time.monotonic() > deadline:
                    break
            stop.set()
            for thread in writers:
                thread.join()
            # What was written last may still be ahead of the reader: read on until the feed ends.
            for page in reader.feed(after=positions[-1], limit=7):
                seen += [e.event_id for e in page.events]
                positions += [e.position for e in page.events]
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    assert len(written) > 20
    assert positions == sorted(positions) and len(seen) == len(set(seen))  # in order, nothing twice
    assert set(written) <= set(seen)  # nothing skipped
    assert set(seen) == set(written)  # and nothing but what these writers wrote after `start`


def test_wait_for_read_store_times_out_with_the_version_it_has(stack: ClientStack) -> None:
    from booking_ledger_client import ReadStoreBehind

    code = random_code("WAIT")
    with LedgerClient(stack.url, stack.hotel, dynamodb_table=stack.table,
                      dynamodb_endpoint=stack.dynamodb_endpoint, region="eu-west-1") as hotel:
        hotel.create(code, [priced("1.00")])
        wait_until(lambda: hotel.read_events(code).version == 1, 60, what="the read store to hold version 1")
        with pytest.raises(ReadStoreBehind) as behind:
            hotel.wait_for_read_store(code, 5, timeout=0.5)
    assert behind.value.latest_version == 1


def test_a_create_rides_through_a_postgres_restart() -> None:
    """503 (with Retry-After) and refused connections while Postgres is down are retried; the
    create lands once when it is back. An impatient client gets Unavailable with the answer's hint."""
    own = Stack(scratch.folder("booking-ledger-client-pg-"))
    try:
        own.start_postgres()
        url = own.database("client_restart")
        # No retry budget in the API: the 503s reach the client, whose own retries are under test
        # (with the default budget the API rides through the restart itself).
        api = own.start_api(url, workers=1, LEDGER_DB_TIMEOUT="2", LEDGER_WRITE_RETRY_SECONDS="0")
        key = make_key(url, "hotel", "read,write")
        code = random_code("PG")
        with LedgerClient(api.url, key, retry_seconds=0) as impatient, \
                LedgerClient(api.url, key, retry_seconds=30) as patient:
            impatient.create(random_code("PG"), [priced("1.00")])  # the key is known and cached
            own.postgres.stop(mode="fast")
            with pytest.raises(Unavailable) as down:
                impatient.create(code, [priced("1.00")])
            assert down.value.status == 503 and down.value.retry_after == 1
            outcome: list[AppendResult] = []
            thread = threading.Thread(target=lambda: outcome.append(patient.create(code, [priced("2.00")])))
            thread.start()
            time.sleep(1.5)
            own.postgres.start()
            thread.join(timeout=60)
            assert outcome and outcome[0].version == 1
            assert [e.price for e in patient.events(code).events] == [Money("2.00", "EUR")]
    finally:
        own.stop()


def test_the_readme_example_runs_as_written(stack: ClientStack) -> None:
    readme = (Path(__file__).parents[2] / "client" / "README.md").read_text()
    section = readme.split("## Using the client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "LEDGER_URL": stack.url, "HOTEL_KEY": stack.hotel, "LEDGER_DYNAMODB_TABLE": stack.table,
           "LEDGER_DYNAMODB_ENDPOINT": stack.dynamodb_endpoint}
    done = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    source, version, events = done.stdout.split(" ", 2)
    assert source in ("dynamodb", "ledger") and version == "2"
    assert events.strip() == "[('BookingPriced', '120.00'), ('PriceChanged', '99.50')]"
