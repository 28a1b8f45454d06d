"""The partition campaign's checker on small hand-made histories: one that keeps every promise,
and for each invariant one that breaks it (so that each check can fail)."""

from __future__ import annotations

import math

from tests.partitions.checker import (
    INVARIANTS,
    Fault,
    FeedPage,
    Final,
    History,
    Read,
    Sent,
    Stored,
    Write,
    check,
)

BUDGET, DEADLINE = 20.0, 35.0


def stored(code: str, version: int, position: int, dept: str = "hotel") -> Stored:
    return Stored(f"e-{code}-{version}", code, version, position, dept, "PriceChanged", "1.00", "EUR")


def sent(code: str, version: int) -> Sent:
    return Sent(f"e-{code}-{version}", "PriceChanged", "1.00", "EUR")


def write(code: str, version: int, start: float, end: float, status: int | None = 201, client: str = "c1",
          host: str = "api1") -> Write:
    return Write(client, host, code, "hotel", start, end, status, (sent(code, version),),
                 (version,) if status and status < 300 else ())


def clean() -> tuple[History, Final]:
    ledger = [stored("A", 1, 1000), stored("B", 1, 2000), stored("A", 2, 3000)]
    history = History(
        writes=[write("A", 1, 1.0, 1.1), write("B", 1, 1.2, 1.3, host="api2"), write("A", 2, 2.0, 2.1)],
        reads=[Read("c1", "api2", "A", 1.5, 1.6, 200, 1), Read("c1", "api1", "A", 2.5, 2.6, 200, 2)],
        feed=[FeedPage("feed", "api1", 1.0, 1.1, 200, 0, tuple(ledger[:2])),
              FeedPage("feed", "api2", 3.0, 3.1, 200, 2000, tuple(ledger[2:]))],
        faults=[Fault("isolate", "pg1 [primary]", 1.9, 5.0)],
    )
    final = Final(ledger, {"A": ("hotel", 2), "B": ("hotel", 1)}, list(ledger), list(ledger))
    return history, final


def failing(history: History, final: Final) -> set[str]:
    verdict = check(history, final, BUDGET, DEADLINE)
    return {name for name, found in verdict.violations.items() if found}


def test_a_clean_history_keeps_every_invariant_and_measures_unavailability() -> None:
    verdict = check(*clean(), BUDGET, DEADLINE)
    assert verdict.ok, verdict.violations
    assert set(verdict.violations) == set(INVARIANTS)
    assert math.isclose(verdict.unavailability["isolate"]["p50"], 0.2)
    assert verdict.unavailability["isolate"]["faults"] == 1
    assert verdict.unavailability["isolate (primary)"]["max"] == verdict.unavailability["isolate"]["max"]


def test_an_acknowledged_append_missing_from_the_ledger_breaks_acknowledged() -> None:
    history, final = clean()
    final.ledger = [e for e in final.ledger if e.version != 2]
    final.kafka = final.dynamodb = list(final.ledger)
    final.bookings["A"] = ("hotel", 1)
    history.feed[1] = FeedPage("feed", "api2", 3.0, 3.1, 200, 2000, ())
    history.reads.pop()
    assert failing(history, final) == {"acknowledged"}


def test_content_other_than_acknowledged_breaks_acknowledged() -> None:
    history, final = clean()
    history.writes[0] = Write("c1", "api1", "A", "hotel", 1.0, 1.1, 201,
                              (Sent("e-A-1", "PriceChanged", "2.00", "EUR"),), (1,))
    assert failing(history, final) == {"acknowledged"}


def test_an_event_downstream_that_the_ledger_lacks_is_a_phantom() -> None:
    history, final = clean()
    final.kafka = [*final.kafka, stored("A", 3, 9000)]
    assert failing(history, final) == {"no_phantom"}
    history, final = clean()
    final.dynamodb = [*final.dynamodb[:-1], Stored("e-A-2", "A", 2, 3500, "hotel")]  # a discarded commit's position
    assert failing(history, final) == {"no_phantom"}
    history, final = clean()
    history.feed.append(FeedPage("feed2", "api1", 4.0, 4.1, 200, 0, (stored("C", 1, 500),)))
    assert "no_phantom" in failing(history, final)


def test_a_booking_with_two_owners_is_caught() -> None:
    history, final = clean()
    final.dynamodb = [*final.dynamodb, Stored("e-B-1", "B", 1, 2000, "car")]
    assert failing(history, final) == {"one_owner"}


def test_a_gap_in_versions_is_caught() -> None:
    history, final = clean()
    final.bookings["A"] = ("hotel", 3)
    assert failing(history, final) == {"gapless"}


def test_the_feed_must_not_skip_repeat_or_reorder() -> None:
    history, final = clean()
    history.feed[1] = FeedPage("feed", "api2", 3.0, 3.1, 200, 2000, (stored("B", 1, 2000), stored("A", 2, 3000)))
    assert failing(history, final) == {"feed"}  # B v1 twice
    history, final = clean()
    history.feed[0] = FeedPage("feed", "api1", 1.0, 1.1, 200, 0, (stored("A", 1, 1000),))
    assert failing(history, final) == {"feed"}  # B v1 never served
    history, final = clean()
    history.feed = [FeedPage("feed", "api1", 1.0, 1.1, 200, 0,
                             (stored("A", 2, 1000), stored("B", 1, 2000), stored("A", 1, 3000)))]
    assert "feed" in failing(history, final)  # A's versions out of order


def test_downstream_must_hold_every_ledger_event_in_version_order() -> None:
    history, final = clean()
    final.kafka = final.kafka[:2]
    assert failing(history, final) == {"downstream_complete"}
    history, final = clean()
    final.kafka = [final.kafka[2], final.kafka[0], final.kafka[1]]
    assert failing(history, final) == {"downstream_complete"}


def test_a_read_after_an_acknowledged_append_that_misses_it_breaks_read_your_writes() -> None:
    history, final = clean()
    history.reads.append(Read("c2", "api2", "A", 2.2, 2.3, 200, 1))  # A v2 answered at 2.1
    assert failing(history, final) == {"read_your_writes"}


def test_a_version_going_back_for_one_client_breaks_monotonic_reads() -> None:
    history, final = clean()
    # A v2's append was in flight (sent at 2.0, answered at 2.1): v2 then v1 breaks no read-your-writes
    history.reads = [Read("c1", "api1", "A", 2.01, 2.02, 200, 2), Read("c1", "api2", "A", 2.03, 2.04, 200, 1)]
    assert failing(history, final) == {"monotonic_reads"}


def test_no_answer_or_an_early_5xx_breaks_answered_and_counts_in_its_fault() -> None:
    history, final = clean()
    history.writes.append(Write("c3", "api1", "C", "hotel", 2.0, 2.0 + DEADLINE, None, (Sent("x", "T"),)))
    history.writes.append(Write("c3", "api2", "D", "hotel", 3.0, 4.0, 503, (Sent("y", "T"),)))
    history.writes.append(Write("c3", "api2", "E", "hotel", 3.0, 3.0 + BUDGET + 1, 503, (Sent("z", "T"),)))
    # The API's own deadline: its budget less the answer's reserve, and no try started in the last 50 ms.
    history.writes.append(Write("c3", "api2", "G", "hotel", 3.0, 3.0 + BUDGET - 1.04, 503, (Sent("v", "T"),)))
    history.writes.append(Write("c3", "api2", "F", "hotel", 3.0, 3.1, 0, (Sent("w", "T"),)))  # its API was killed
    verdict = check(history, final, BUDGET, DEADLINE)
    assert len(verdict.violations["answered"]) == 2  # the 503 after the whole budget is allowed
    assert {name for name, found in verdict.violations.items() if found} == {"answered"}
    assert verdict.unavailability["isolate"]["5xx"] == 3  # every 5xx counts in its fault's window
