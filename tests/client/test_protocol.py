"""The client's decisions on their own: the plans of protocol.py fed with answers, no servers.

The end-to-end tests next to this file cover what the real ledger answers; these cover answers
it gives only in corner cases (a conflict after a lost try) and the arithmetic of retries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from booking_ledger_client import BookingCodeTaken, BookingNotFound, Event, RateLimited, VersionConflict, protocol
from booking_ledger_client.dynamodb import QueryPage, event_of_item
from booking_ledger_client.models import prepare_events
from booking_ledger_client.protocol import HttpAnswer, HttpFailed, HttpRequest, Outcome, Plan, RetryPolicy, Sleep

from core.dynamodb import item_of
from core.events import decode_event


def answer(status: int, body: dict[str, Any], **headers: str) -> HttpAnswer:
    return HttpAnswer(status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, json.dumps(body).encode())


def run(plan: Plan[Any], outcomes: Sequence[Outcome]) -> tuple[Any, list[Any]]:
    """Run `plan`, answering its requests and queries with `outcomes` in order; the steps it took."""
    steps: list[Any] = []
    pending = list(outcomes)
    reply: Outcome = None
    while True:
        try:
            step = plan.send(reply)
        except StopIteration as stop:
            return stop.value, steps
        steps.append(step)
        reply = None if isinstance(step, Sleep) else pending.pop(0)


def event_json(code: str, version: int, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "booking_code": code, "version": version, "type": "BookingPriced",
            "price": {"amount": "120.00", "currency": "EUR"}, "data": None, "department": "hotel",
            "occurred_at": None, "recorded_at": "2026-11-26T10:00:00.123456Z", "position": 1000 * version, **extra}


TAKEN = answer(409, {"code": "booking_code_taken", "status": 409, "department": "hotel", "detail": "taken"})
POLICY = RetryPolicy(retry_seconds=30, random=lambda: 0.5)


def test_a_conflict_after_a_lost_try_is_settled_by_our_own_event_ids() -> None:
    events = prepare_events([{"type": "BookingPriced", "price": {"amount": "120.00", "currency": "EUR"}}])
    mine = events[0]["event_id"]
    stored = answer(200, {"booking_code": "R1", "events": [event_json("R1", 1, mine)], "next_from_version": None})
    result, steps = run(protocol.append("R1", events, 0, POLICY), [HttpFailed(TimeoutError()), TAKEN, stored])
    assert (result.version, result.replayed, str(result.events[0].event_id)) == (1, True, mine)
    requests = [s for s in steps if isinstance(s, HttpRequest)]
    assert [r.method for r in requests] == ["POST", "POST", "GET"]
    assert requests[0].body == requests[1].body  # the retry is the same request, event ids included
    assert requests[2].params == {"from_version": 1, "limit": 1}


def test_a_conflict_after_a_lost_try_with_other_event_ids_is_refused() -> None:
    events = prepare_events([{"type": "BookingPriced"}])
    theirs = answer(200, {"booking_code": "R1", "events": [event_json("R1", 1, str(uuid.uuid4()))],
                          "next_from_version": None})
    with pytest.raises(BookingCodeTaken) as taken:
        run(protocol.append("R1", events, 0, POLICY), [answer(503, {"code": "unavailable"}), TAKEN, theirs])
    assert taken.value.department == "hotel"


def test_a_version_conflict_after_a_lost_append_is_settled_the_same_way() -> None:
    events = prepare_events([{"type": "A"}, {"type": "B"}])
    ids = [e["event_id"] for e in events]
    conflict = answer(409, {"code": "version_conflict", "current_version": 5})
    stored = answer(200, {"booking_code": "R1", "events": [event_json("R1", 4, ids[0]), event_json("R1", 5, ids[1])],
                          "next_from_version": None})
    result, steps = run(protocol.append("R1", events, 3, POLICY), [HttpFailed(OSError()), conflict, stored])
    assert result.version == 5 and result.replayed
    assert steps[-1].params == {"from_version": 4, "limit": 2}


def test_a_conflict_without_a_lost_try_is_refused_without_looking() -> None:
    events = prepare_events([{"type": "A"}])
    with pytest.raises(BookingCodeTaken):
        run(protocol.append("R1", events, 0, POLICY), [TAKEN])
    # A 429 is refused before anything is written: nothing to settle after it either.
    conflict = answer(409, {"code": "version_conflict", "current_version": 2})
    with pytest.raises(VersionConflict):
        run(protocol.append("R1", events, 1, POLICY), [answer(429, {"code": "rate_limited"}, retry_after="0"),
                                                       conflict])


def test_other_4xx_are_never_retried_and_retries_stop_within_retry_seconds() -> None:
    with pytest.raises(BookingNotFound):  # a retry would find no second answer (IndexError)
        run(protocol.booking("R1", POLICY), [answer(404, {"code": "booking_not_found"})])
    now = [0.0]

    def clock() -> float:
        return now[0]

    policy = RetryPolicy(retry_seconds=3, clock=clock, random=lambda: 1.0)
    plan = protocol.booking("R1", policy)
    step = next(plan)
    pauses = []
    with pytest.raises(RateLimited) as limited:
        while True:
            if isinstance(step, Sleep):
                pauses.append(step.seconds)
                now[0] += step.seconds
                step = plan.send(None)
            else:
                step = plan.send(answer(429, {"code": "rate_limited"}, retry_after="1"))
    assert pauses == [1.2, 1.2] and limited.value.retry_after == 1  # Retry-After (+ up to 20 %), not sooner
    assert sum(pauses) <= 3


def test_backoff_is_capped_and_retry_after_may_be_a_date() -> None:
    policy = RetryPolicy(retry_seconds=30, random=lambda: 1.0)
    assert [policy.delay(n, None) for n in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    hint = protocol.retry_after(answer(503, {}, retry_after=later))
    assert hint is not None and 25 < hint <= 30


def test_read_store_items_decode_to_the_ledgers_events_and_gaps_are_held_back() -> None:
    event_id = str(uuid.uuid4())
    written = event_json("R1", 1, event_id, data={"a": [1, 2.5]}, occurred_at="2026-11-26T10:00:00Z")
    ledger = Event.from_json(written)
    # The item exactly as the sink writes it: the writer (core.dynamodb) and this reader cannot drift apart.
    item = item_of(decode_event(json.dumps(written).encode()))
    assert event_of_item(item) == ledger
    third = {**item, "version": {"N": "3"}, "event_id": {"S": str(uuid.uuid4())}}
    # The sink wrote version 3 before version 2: the store is read up to version 1 only, and a
    # caller who needs version 3 is sent to the ledger.
    result, _ = run(protocol.read_events("R1", None, True, POLICY), [QueryPage([item, third], None)])
    assert (result.source, result.version, result.events) == ("dynamodb", 1, [ledger])
    ledger_page = answer(200, {"booking_code": "R1", "events": [event_json("R1", v, str(uuid.uuid4()))
                                                                for v in (1, 2, 3)], "next_from_version": None})
    result, _ = run(protocol.read_events("R1", 3, True, POLICY), [QueryPage([item, third], None), ledger_page])
    assert (result.source, result.version) == ("ledger", 3)
