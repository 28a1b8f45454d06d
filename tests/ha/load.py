"""Writers and a feed reader through the real API, and the checks a failover must pass afterwards.

By default clients never retry a 5xx: every 5xx they see counts, because the API is meant to ride
through the failover itself. They do resend acknowledged requests on purpose (idempotent retries).
With `resend_5xx` they behave as the contract tells clients to: a 5xx (or a lost answer) is sent
again, with the same body, until it gets a final answer; each try is an Outcome of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import httpx

from core.pg import connect_primary


@dataclass(frozen=True)
class Ack:
    code: str
    event_id: str
    version: int
    type: str
    price: str | None
    department: str


@dataclass
class Outcome:
    sent: float
    done: float
    status: int
    kind: str
    problem: str = ""  # the problem+json code of an error answer


@dataclass
class Load:
    api: str
    keys: dict[str, str]
    writers: int = 12
    resend_5xx: bool = False
    read_feed: bool = True  # a thread pages the global feed; check_ledger then checks it skipped nothing
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    acks: dict[str, Ack] = field(default_factory=dict)
    created: dict[str, set[str]] = field(default_factory=dict)  # shared code -> departments that got 2xx
    outcomes: list[Outcome] = field(default_factory=list)
    unexpected: list[tuple[int, str]] = field(default_factory=list)
    codes: set[str] = field(default_factory=set)
    feed: list[tuple[int, str]] = field(default_factory=list)  # (position, event_id) as paged
    feed_errors: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _feed_after: int = 0
    resends_201: int = 0

    def start(self) -> None:
        departments = list(self.keys)
        for index in range(self.writers):
            self._threads.append(threading.Thread(target=self._write, args=(departments[index % len(departments)],),
                                                  daemon=True))
        if self.read_feed:
            self._threads.append(threading.Thread(target=self._read_feed, daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)
            assert not thread.is_alive(), "a client thread did not finish"

    def _write(self, department: str) -> None:
        rng = random.Random()
        client = httpx.Client(base_url=self.api, timeout=90,
                              headers={"Authorization": f"Bearer {self.keys[department]}"})
        own: dict[str, int] = {}
        last_acked: tuple[str, dict] | None = None
        while not self._stop.is_set():
            roll = rng.random()
            shared = False
            if roll < 0.2 or not own:
                code, body, kind = f"H-{self.run_id}-{uuid.uuid4().hex[:10]}", {"expected_version": 0}, "create"
            elif roll < 0.35:
                code, body, kind = f"S-{self.run_id}-{rng.randrange(40)}", {"expected_version": 0}, "collide"
                shared = True
            elif roll < 0.45 and last_acked is not None:
                code, body = last_acked
                kind = "resend"
            else:
                code = rng.choice(list(own))
                body = {"expected_version": own[code]} if rng.random() < 0.7 else {}
                kind = "append"
            if kind != "resend":
                body = {**body, "events": [
                    {"event_id": str(uuid.uuid4()), "type": "price_set",
                     "price": {"amount": str(Decimal(rng.randrange(1000, 99999)) / 100), "currency": "EUR"}}
                    for _ in range(rng.randint(1, 2))]}
            with self._lock:
                self.codes.add(code)
            while True:
                sent = time.monotonic()
                try:
                    answer = client.post(f"/v1/bookings/{code}/events", json=body)
                    status, payload = answer.status_code, answer.json()
                except (httpx.HTTPError, ValueError) as error:
                    status, payload = 0, {"error": repr(error)}
                done = time.monotonic()
                with self._lock:
                    problem = str(payload.get("code", "")) if status >= 400 and isinstance(payload, dict) else ""
                    self.outcomes.append(Outcome(sent, done, status, kind, problem))
                if not (self.resend_5xx and (status >= 500 or status == 0)) or self._stop.is_set():
                    break
                time.sleep(0.3)
            with self._lock:
                if status in (200, 201):
                    # A resend answers 200; 201 when the API's own first try of it lost its answer
                    # in the failover (docs/api.md: both mean stored, with the same body).
                    self.resends_201 += kind == "resend" and status == 201
                    for event in payload["events"]:
                        price = event["price"]["amount"] if event.get("price") else None
                        self.acks[event["event_id"]] = Ack(code, event["event_id"], event["version"], event["type"],
                                                           price, department)
                    if shared:
                        self.created.setdefault(code, set()).add(department)
                    own[code] = payload["version"]
                    last_acked = (code, body)
                elif status == 409 and payload.get("code") in ("booking_code_taken", "version_conflict"):
                    if payload["code"] == "version_conflict":
                        own[code] = payload.get("current_version", own.get(code, 0))
                elif status != 409 or not shared:
                    if not (self.resend_5xx and (status >= 500 or status == 0)):  # given up at the stop
                        self.unexpected.append((status, str(payload)[:300]))
        client.close()

    def _read_feed(self) -> None:
        client = httpx.Client(base_url=self.api, timeout=90,
                              headers={"Authorization": f"Bearer {next(iter(self.keys.values()))}"})
        while not self._stop.is_set():
            if not self.page_feed(client):
                time.sleep(0.2)
        client.close()

    def page_feed(self, client: httpx.Client) -> int:
        """One page of the global feed after the last position seen; the number of events on it."""
        answer = client.get("/v1/events", params={"after": self._feed_after, "limit": 500})
        if answer.status_code != 200:
            self.feed_errors.append(answer.status_code)
            return 0
        page = answer.json()
        self.feed.extend((e["position"], e["event_id"]) for e in page["events"])
        self._feed_after = page["next_after"]
        return len(page["events"])

    def finish_feed(self) -> None:
        """Page the feed to its end (after the writers stopped)."""
        client = httpx.Client(base_url=self.api, timeout=90,
                              headers={"Authorization": f"Bearer {next(iter(self.keys.values()))}"})
        empty = 0
        while empty < 3:  # the fence may hold back the last events for a moment
            empty = empty + 1 if self.page_feed(client) == 0 else 0
            time.sleep(0.3)
        client.close()

    # -- what clients saw

    def server_errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status >= 500 or o.status == 0]

    def unavailable_for(self, fault_at: float) -> float:
        """Seconds from the fault to the first 2xx append that was sent after it."""
        after = [o.done for o in self.outcomes if o.sent >= fault_at and o.status in (200, 201)]
        return min(after) - fault_at if after else float("inf")

    def longest_pause(self, start: float, end: float) -> float:
        """The longest stretch of [start, end] in which no append was acknowledged (no 2xx arrived)."""
        times = sorted(o.done for o in self.outcomes if o.status in (200, 201) and start <= o.done <= end)
        edges = [start, *times, end]
        return max(later - earlier for earlier, later in itertools.pairwise(edges))

    def acknowledged_between(self, start: float, end: float) -> list[Outcome]:
        """2xx answers to new appends (not resends of acknowledged ones) sent at or after `start`
        and answered before `end`."""
        return [o for o in self.outcomes
                if o.status in (200, 201) and o.kind != "resend" and o.sent >= start and o.done < end]

    def slowest(self, since: float) -> float:
        return max((o.done - o.sent for o in self.outcomes if o.done >= since), default=0.0)

    # -- the invariants, checked on the ledger itself

    def lost(self, url: str) -> list[Ack]:
        """Acknowledged events the ledger does not have."""
        return asyncio.run(self._lost(url))

    async def _lost(self, url: str) -> list[Ack]:
        conn = await connect_primary(url, timeout=30)
        try:
            found = {r["event_id"] for r in await conn.fetch(
                "SELECT event_id::text AS event_id FROM events WHERE event_id = ANY($1::uuid[])", list(self.acks))}
        finally:
            await conn.close()
        return [ack for event_id, ack in self.acks.items() if event_id not in found]

    def check_ledger(self, url: str) -> dict[str, int]:
        return asyncio.run(self._check_ledger(url))

    async def _check_ledger(self, url: str) -> dict[str, int]:
        conn = await connect_primary(url, timeout=30)
        try:
            rows = await conn.fetch(
                "SELECT e.event_id::text AS event_id, e.booking_code, e.version, e.type, "
                "e.price_amount::text AS price, e.department, e.position FROM events e "
                "WHERE e.booking_code = ANY($1::text[])", sorted(self.codes))
            bookings = {r["code"]: (r["department"], r["version"]) for r in await conn.fetch(
                "SELECT code, department, version FROM bookings WHERE code = ANY($1::text[])", sorted(self.codes))}
            every_event = {r["event_id"] for r in await conn.fetch("SELECT event_id::text FROM events")}
        finally:
            await conn.close()
        stored = {r["event_id"]: r for r in rows}
        lost = [a for a in self.acks.values() if a.event_id not in stored]
        assert not lost, f"{len(lost)} acknowledged events lost, e.g. {lost[:3]}"
        for ack in self.acks.values():
            row = stored[ack.event_id]
            got = (row["booking_code"], row["version"], row["type"], row["department"])
            assert got == (ack.code, ack.version, ack.type, ack.department), (ack, dict(row))
            assert (Decimal(row["price"]) if row["price"] else None) == (Decimal(ack.price) if ack.price else None)
        versions: dict[str, list[int]] = {}
        for row in rows:
            versions.setdefault(row["booking_code"], []).append(row["version"])
        for code, found in versions.items():
            assert sorted(found) == list(range(1, len(found) + 1)), f"{code}: versions {sorted(found)}"
            assert bookings[code][1] == len(found), f"{code}: booking at v{bookings[code][1]}, {len(found)} events"
        for code, departments in self.created.items():
            assert len(departments) == 1, f"{code} created with 2xx by {departments}"
            assert bookings[code][0] in departments, f"{code} owned by {bookings[code][0]}, 2xx to {departments}"
        if self.read_feed:
            positions = [p for p, _ in self.feed]
            assert positions == sorted(set(positions)), "the feed repeated or reordered a position"
            paged = [event_id for _, event_id in self.feed]
            assert len(paged) == len(set(paged)), "the feed returned an event twice"
            skipped = every_event - set(paged)
            assert not skipped, f"the feed skipped {len(skipped)} events"
        return {"acknowledged": len(self.acks), "events": len(rows), "bookings": len(versions),
                "feed": len(self.feed)}
