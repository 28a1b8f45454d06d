"""The partition campaign: the replicated ledger on hosts of its own, network and process faults
on a seeded schedule, a history of every request, and the checker's verdict.

    .venv/bin/python -m tests.partitions.campaign --duration 3m --seed 7   (make partitions DURATION=3m SEED=7)

Every part runs on its own network namespace (devstack/hosts.py on devstack/netns.py: root only).
Clients in the root namespace append, read and tail the feed through both API hosts and record
each request and answer with wall times. A fault thread picks, from the seed, one fault at a time
among the kinds below (each kind once per round of seven, in a seeded order), holds it for a time
drawn from --hold (3-20 s by default), heals it, and waits until the cluster is whole again (a
leader, two replicas caught up and one of them synchronous, every process up, and an append sent
after the heal acknowledged) before the next:

- isolate:  one host cut off from every other host (the primary most often);
- split:    two sides, {primary, some of: the leading relay, one API host, one etcd member} |
            {everything else: the standbys, the etcd majority, the other API host, Kafka, ...};
- one_way:  one direction of one link dropped (primary→standbys, primary→etcd, relay→primary, ...);
- delay:    one host's packets to the others held 50-500 ms;
- loss:     5-30 % of one host's packets to and from the others dropped;
- pause:    one process frozen (SIGSTOP), thawed when the hold ends;
- kill:     one process killed (-9), started again when the hold ends (a Patroni node with its
            Postgres, an etcd member, a broker; our API, relays and sink by their supervisor).

A host that is not whole 120 s after a heal is a violation (`rejoined`); the campaign then does
what the runbook tells an operator (start again what is not running) and goes on.

At the end every fault is healed, the pipeline drains, the feed is read to its end, and the ledger,
the Kafka topic and the DynamoDB table are read whole for tests/partitions/checker.py. The report
(faults, invariants, unavailability per kind) goes to bench/results/partitions/; the exit status is
1 when any invariant failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx

from core.pg import connect_primary, is_transient
from devstack.ha import PatroniNode
from devstack.hosts import HostedStack
from devstack.netns import Network
from devstack.processes import wait_until
from tests import scratch
from tests.partitions.checker import (
    INVARIANTS,
    Fault,
    FeedPage,
    Final,
    History,
    Read,
    Sent,
    Stored,
    Verdict,
    Write,
    check,
    writes_back,
)

KINDS = ("isolate", "split", "one_way", "delay", "loss", "pause", "kill")
DEPARTMENTS = ("hotel", "car", "flight")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "partitions"
CAUGHT_UP = 1 << 20  # bytes of WAL a replica may be behind and count as caught up (maximum_lag_on_failover)
SLOWEST = 10  # faults listed in the report with the longest time until writes were back
RETRY_SECONDS, DB_TIMEOUT = 20, 5
DEADLINE = RETRY_SECONDS + DB_TIMEOUT + 10  # a client gives up on an answer after this many seconds


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def event_of(data: dict) -> Stored:
    price = data.get("price") or {}
    return Stored(str(data["event_id"]), data["booking_code"], int(data["version"]), int(data["position"]),
                  data.get("department", ""), data.get("type", ""), price.get("amount"), price.get("currency"))


class Clients:
    """Writers that own bookings, read them through any API host, and read others'; one feed reader."""

    def __init__(self, urls: dict[str, str], keys: dict[str, str], history: History, rng: random.Random,
                 writers: int, pace: float) -> None:
        self.urls, self.keys, self.history, self.pace = urls, keys, history, pace
        self.rngs = [random.Random(rng.random()) for _ in range(writers)]
        self.acked: dict[str, int] = {}  # code -> highest acknowledged version (for others' reads)
        self.owned: list[tuple[str, str]] = []  # (code, department) of every created booking
        self.feed_after = 0  # the feed reader's position
        self.stop = asyncio.Event()

    async def run(self, seconds: float) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=8)
        async with httpx.AsyncClient(timeout=httpx.Timeout(DEADLINE, connect=5), limits=limits) as http:
            tasks = [asyncio.create_task(self.writer(http, f"c{i}", rng)) for i, rng in enumerate(self.rngs)]
            feed = asyncio.create_task(self.feed_reader(http))
            await asyncio.sleep(seconds)
            self.stop.set()
            await asyncio.gather(*tasks)
            await feed

    async def request(self, http: httpx.AsyncClient, host: str, method: str, path: str, department: str,
                      body: dict | None = None) -> tuple[float, float, int | None, dict | None]:
        start = time.time()
        try:
            response = await http.request(method, self.urls[host] + path, json=body,
                                          headers={"Authorization": f"Bearer {self.keys[department]}"})
        except httpx.TimeoutException:
            return start, time.time(), None, None  # no answer within the deadline
        except httpx.HTTPError:
            return start, time.time(), 0, None  # the connection refused or broken: the API process died
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return start, time.time(), response.status_code, answer

    async def writer(self, http: httpx.AsyncClient, name: str, rng: random.Random) -> None:
        mine: dict[str, tuple[str, int]] = {}  # code -> (department, version)
        while not self.stop.is_set():
            await asyncio.sleep(rng.uniform(0, 2 * self.pace))
            roll = rng.random()
            if roll < 0.2 or not mine:
                department = rng.choice(DEPARTMENTS)
                code = f"P-{uuid.uuid4().hex[:10].upper()}"
                version = await self.append(http, name, rng, code, department, 0)
                if version:
                    mine[code] = (department, version)
                    self.owned.append((code, department))
            elif roll < 0.65:
                code = rng.choice(list(mine))
                department, known = mine[code]
                version = await self.append(http, name, rng, code, department, known)
                if version:
                    mine[code] = (department, version)
                else:  # its outcome unknown after every retry: leave the booking alone
                    del mine[code]
            elif roll < 0.9:
                await self.read(http, name, rng, rng.choice(list(mine)))
            elif self.owned:
                await self.read(http, name, rng, rng.choice(self.owned)[0])

    async def append(self, http: httpx.AsyncClient, name: str, rng: random.Random, code: str, department: str,
                     expected: int) -> int | None:
        """One append, resent with the same events while its outcome is unknown; its version or None."""
        events = [{"event_id": str(uuid.uuid4()), "type": rng.choice(["BookingPriced", "PriceChanged"]),
                   "price": {"amount": f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}", "currency": "EUR"},
                   "data": {"client": name}} for _ in range(rng.randint(1, 2))]
        body = {"expected_version": expected, "events": events}
        sent = tuple(Sent(e["event_id"], e["type"], e["price"]["amount"], e["price"]["currency"]) for e in events)
        given_up = time.time() + 2 * DEADLINE
        while True:
            host = rng.choice(list(self.urls))
            start, end, status, answer = await self.request(http, host, "POST", f"/v1/bookings/{code}/events",
                                                            department, body)
            versions: tuple[int, ...] = ()
            if status is not None and 200 <= status < 300 and answer:
                versions = tuple(int(e["version"]) for e in answer.get("events", []))
            self.history.writes.append(Write(name, host, code, department, start, end, status, sent, versions))
            if versions:
                self.acked[code] = max(self.acked.get(code, 0), max(versions))
                return max(versions)
            if status is not None and status < 500:
                return None  # refused (a conflict, say): nothing stored
            if time.time() > given_up or self.stop.is_set():
                return None
            await asyncio.sleep(rng.uniform(0.2, 1.0))

    async def read(self, http: httpx.AsyncClient, name: str, rng: random.Random, code: str) -> None:
        host = rng.choice(list(self.urls))
        start, end, status, answer = await self.request(http, host, "GET", f"/v1/bookings/{code}/events?limit=1000",
                                                        "hotel")
        version = max((int(e["version"]) for e in (answer or {}).get("events", [])), default=0) \
            if status == 200 else 0
        self.history.reads.append(Read(name, host, code, start, end, status, version))

    async def feed_reader(self, http: httpx.AsyncClient, to_end: bool = False) -> None:
        """GET /v1/events from `feed_after` on, through each API host in turn: while the writers run,
        or (`to_end`) until a page comes back empty."""
        hosts = list(self.urls)
        turn = 0
        while to_end or not self.stop.is_set():
            host = hosts[turn % len(hosts)]
            turn += 1
            asked = self.feed_after
            start, end, status, answer = await self.request(
                http, host, "GET", f"/v1/events?after={asked}&limit=500", "hotel")
            events: tuple[Stored, ...] = ()
            if status == 200 and answer is not None:
                events = tuple(event_of(e) for e in answer.get("events", []))
                if answer.get("next_after") is not None:
                    self.feed_after = int(answer["next_after"])
            self.history.feed.append(FeedPage("feed", host, start, end, status, asked, events))
            if to_end and status == 200 and not events:
                return
            await asyncio.sleep(0.05 if to_end and events else 0.5)

    def read_feed_to_end(self) -> None:
        """After the drain: the feed reader goes on from where it stopped until a page comes back empty."""

        async def run() -> None:
            async with httpx.AsyncClient(timeout=httpx.Timeout(DEADLINE, connect=5)) as http:
                await asyncio.wait_for(self.feed_reader(http, to_end=True), 600)

        asyncio.run(run())


class Faults:
    """The seeded schedule: one fault at a time, each held a bounded time, healed, then recovery awaited."""

    def __init__(self, stack: HostedStack, net: Network, rng: random.Random, history: History,
                 hold: tuple[float, float], log: list[str], kinds: tuple[str, ...] = KINDS) -> None:
        self.stack, self.net, self.rng, self.history, self.hold, self.log = stack, net, rng, history, hold, log
        self.kinds = kinds
        self.not_recovered: list[str] = []
        self.until = math.inf  # when the clients stop writing (set by run)
        self.frozen: list = []
        self.stopped = threading.Event()

    def say(self, text: str) -> None:
        line = f"{datetime.now(UTC):%H:%M:%S} {text}"
        self.log.append(line)
        print(line, flush=True)

    def run(self, until: float) -> None:
        self.until = until
        cycle: list[str] = []
        while time.time() < until and not self.stopped.is_set():
            if not cycle:
                cycle = list(self.kinds)
                self.rng.shuffle(cycle)
            kind = cycle.pop()
            try:
                self.one(kind)
            except Exception as error:  # a fault that could not be applied: say so and go on
                self.say(f"{kind}: could not apply ({error!r})")
                self.heal_all()
            self.recover()
            self.stopped.wait(self.rng.uniform(0.5, 2.0))

    # Roles as they are now

    def primary(self) -> PatroniNode | None:
        return self.stack.cluster.primary()

    def role_host(self, role: str) -> str:
        primary = self.primary()
        nodes = [n.name for n in self.stack.cluster.nodes]
        if role == "primary":
            return primary.name if primary else self.rng.choice(nodes)
        if role == "standby":
            return self.rng.choice([n for n in nodes if primary is None or n != primary.name])
        if role == "etcd":
            return self.rng.choice([m.member for m in self.stack.cluster.etcds])
        if role == "relay":
            return self.stack.relay_leader() or self.rng.choice(["relay1", "relay2"])
        if role == "api":
            return self.rng.choice(["api1", "api2"])
        if role == "kafka":
            return self.rng.choice([f"kafka{b.node_id}" for b in self.stack.brokers])
        return role  # sink, dynamodb

    def pick_role(self) -> str:
        return self.rng.choices(["primary", "standby", "etcd", "relay", "api", "kafka", "sink", "dynamodb"],
                                weights=[5, 2, 1, 2, 1, 1, 1, 1])[0]

    # The faults

    def one(self, kind: str) -> None:
        hold = self.rng.uniform(*self.hold)
        primary = self.primary()
        target = getattr(self, f"apply_{kind}")(hold)
        start = time.time()  # once it is in force: applying a split's rules takes a moment on a busy machine
        if primary is not None and primary.name in re.findall(r"\w+", target):
            target += " [primary]"  # the checker's unavailability has a row of its own for these
        self.say(f"{kind} {target} for {hold:.1f}s")
        self.stopped.wait(hold)
        self.heal(kind)
        self.history.faults.append(Fault(kind, target, start, time.time()))

    def apply_isolate(self, hold: float) -> str:
        host = self.role_host(self.pick_role())
        self.net.isolate(host)
        return host

    def apply_split(self, hold: float) -> str:
        side = {self.role_host("primary")}
        if self.rng.random() < 0.6:
            side.add(self.role_host("relay"))
        side.add(self.role_host("api"))
        if self.rng.random() < 0.4:
            side.add(self.role_host("etcd"))
        other = [name for name in self.net.hosts if name not in side]
        self.net.partition(sorted(side), other)
        return "{" + ", ".join(sorted(side)) + "} | rest"

    def apply_one_way(self, hold: float) -> str:
        primary, standby, etcd = self.role_host("primary"), self.role_host("standby"), self.role_host("etcd")
        relay, api = self.role_host("relay"), self.role_host("api")
        src, dst = self.rng.choice([(primary, standby), (standby, primary), (primary, etcd), (etcd, primary),
                                    (relay, primary), (primary, relay), (api, primary), (primary, api),
                                    (relay, "kafka1"), ("sink", "dynamodb")])
        self.net.drop_one_way(src, dst)
        return f"{src} -> {dst}"

    def apply_delay(self, hold: float) -> str:
        host = self.role_host(self.pick_role())
        ms = self.rng.uniform(50, 500)
        self.net.delay(host, ms, jitter_ms=ms / 10)
        return f"{host} {ms:.0f}ms"

    def apply_loss(self, hold: float) -> str:
        host = self.role_host(self.pick_role())
        fraction = self.rng.uniform(0.05, 0.30)
        self.net.loss(host, fraction)
        return f"{host} {fraction * 100:.0f}%"

    def apply_pause(self, hold: float) -> str:
        host = self.role_host(self.rng.choice(["primary", "primary", "standby", "etcd", "relay", "api", "kafka"]))
        child = self.stack.children()[host]
        if host in self.stack.ledger:
            self.stack.hold(host)
        child.freeze()
        self.frozen.append((host, child))
        return host

    def apply_kill(self, hold: float) -> str:
        host = self.role_host(self.rng.choice(["primary", "primary", "standby", "etcd", "relay", "api", "sink",
                                               "kafka"]))
        child = self.stack.children()[host]
        if host in self.stack.ledger:
            self.stack.hold(host)
        child.kill()
        self.frozen.append((host, child))
        return host

    def heal(self, kind: str) -> None:
        if kind in ("pause", "kill"):
            for host, child in self.frozen:
                if kind == "pause":
                    child.thaw()
                elif host not in self.stack.ledger:
                    child.start() if isinstance(child, PatroniNode) else child.launch()
                self.stack.release(host)
            self.frozen.clear()
        else:
            self.net.heal()

    def heal_all(self) -> None:
        self.net.heal()
        for host, child in self.frozen:
            child.thaw()
            self.stack.release(host)
        self.frozen.clear()

    def whole(self) -> bool:
        """A leader, two replicas within CAUGHT_UP bytes of it (one of them synchronous), and every
        process up."""
        cluster = self.stack.cluster
        if cluster.primary() is None or len(cluster.replicas(max_lag=CAUGHT_UP)) < 2 \
                or not cluster.replicas(synchronous=True, max_lag=CAUGHT_UP):
            return False
        return all(child.alive for child in self.stack.children().values())

    def writing(self, since: float) -> bool:
        """Whether an append sent after `since` was acknowledged (the clients' thread appends them),
        or the clients have stopped."""
        if time.time() >= self.until:
            return True
        return any(w.start >= since and w.versions for w in reversed(self.history.writes[-400:]))

    def recover(self, timeout: float = 120) -> None:
        """Until the cluster is whole (a leader, two replicas caught up, one of them synchronous,
        every process up) and an append sent after the heal was acknowledged: the next fault starts
        from a cluster that has recovered from the last, so that each fault's time until writes
        are back is its own."""
        started = time.time()
        try:
            wait_until(lambda: self.whole() and self.writing(started), timeout, interval=0.5,
                       what="the cluster to be whole and writing")
        except TimeoutError:
            members = [(m.get("name"), m.get("role"), m.get("state")) for m in self.stack.cluster.members()]
            dead = [name for name, child in self.stack.children().items() if not child.alive]
            note = f"not whole {timeout:.0f}s after the heal: members {members}, not running {dead}"
            self.not_recovered.append(note)
            self.say(note + "; the operator's step: restart what is not running")
            self.operator_restart()
            return
        took = time.time() - started
        if took > 20:
            self.say(f"whole again after {took:.0f}s")

    def operator_restart(self) -> None:
        """What the runbook tells an operator: start again what is not running; a node whose Postgres
        does not start (a pg_rewind cut short leaves no valid checkpoint) is built anew from the
        leader (`patronictl reinit`, here Patroni's POST /reinitialize); a replica that runs but does
        not stream (its replication connection left half-open by a lost packet) is restarted
        (`patronictl restart`, POST /restart)."""
        members = {m.get("name"): m for m in self.stack.cluster.members()}
        for name, child in self.stack.children().items():
            if isinstance(child, PatroniNode):
                member = members.get(name, {})
                if not child.alive:
                    child.start()
                elif member.get("state") in ("start failed", "starting", "stopped", None):
                    status, body = _post(child.rest + "/reinitialize", {"force": True})
                    self.say(f"reinit {name}: {status} {body}")
                elif member.get("role") != "leader" and member.get("lag", 0) not in (0, "0"):
                    status, body = _post(child.rest + "/restart", {})
                    self.say(f"restart {name} (lag {member.get('lag')}): {status} {body}")
            elif not child.alive and name not in self.stack.ledger:
                child.launch()
        try:
            wait_until(self.whole, 180, interval=1, what="the cluster to be whole after the operator's steps")
            self.say("whole again after the operator's steps")
        except TimeoutError:
            self.say("still not whole after the operator's steps")


def _post(url: str, body: dict) -> tuple[int, str]:
    try:
        answer = httpx.post(url, json=body, timeout=30)
        return answer.status_code, answer.text[:200]
    except httpx.HTTPError as error:
        return 0, repr(error)


def outbox_size(url: str) -> int | None:
    """Events in the outbox; None while no node takes writes. There can be such a gap after
    `Faults.recover` returned: a leader cut off for less than its lock's TTL goes on writing for a
    moment after the heal, demotes itself, then takes its lock again (seen once in `make test`: no
    node took writes for about 3 s)."""

    async def run() -> int | None:
        try:
            conn = await connect_primary(url, timeout=30)
        except Exception as error:
            if is_transient(error):
                return None
            raise
        try:
            return int(await conn.fetchval("SELECT count(*) FROM outbox"))
        finally:
            await conn.close()

    return asyncio.run(run())


def read_ledger(url: str) -> tuple[list[Stored], dict[str, tuple[str, int]]]:
    async def run() -> tuple[list[Stored], dict[str, tuple[str, int]]]:
        conn = await connect_primary(url, timeout=30)
        try:
            rows = await conn.fetch("SELECT event_id::text, booking_code, version, position, department, type, "
                                    "price_amount::text, price_currency FROM events ORDER BY position")
            bookings = await conn.fetch("SELECT code, department, version FROM bookings")
        finally:
            await conn.close()
        return ([Stored(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows],
                {r["code"]: (r["department"], r["version"]) for r in bookings})

    return asyncio.run(run())


def read_kafka(bootstrap: str, topic: str) -> list[Stored]:
    from confluent_kafka import Consumer, KafkaError

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"partitions-check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        partitions = len(metadata.topics[topic].partitions)
        consumer.subscribe([topic])
        found: list[Stored] = []
        ended: set[int] = set()
        deadline = time.monotonic() + 120
        while len(ended) < partitions and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
                continue
            found.append(event_of(json.loads(message.value())))
        return found
    finally:
        consumer.close()


def read_dynamodb(stack: HostedStack) -> list[Stored]:
    from core import dynamodb

    client = dynamodb.client(stack.settings.dynamo, read_timeout=30, attempts=5)
    items: list[Stored] = []
    start: dict | None = None
    while True:
        page = client.scan(TableName=stack.settings.dynamo.table, ConsistentRead=True,
                           **({"ExclusiveStartKey": start} if start else {}))
        for item in page.get("Items", []):
            items.append(Stored(item["event_id"]["S"], item["booking_code"]["S"], int(item["version"]["N"]),
                                int(item["position"]["N"]), item.get("department", {}).get("S", ""),
                                item.get("type", {}).get("S", ""), item.get("price_amount", {}).get("S"),
                                item.get("price_currency", {}).get("S")))
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def save_history(path: Path, history: History, final: Final) -> None:
    """The whole history and final state, for a post-mortem (kept with the logs, not in the repo)."""
    path.write_text(json.dumps({"history": asdict(history), "final": asdict(final)}))
    print(f"history: {path}", flush=True)


def wait_downstream(stack: HostedStack, ledger_events: int, timeout: float = 180) -> None:
    """Until DynamoDB holds as many items as the ledger has events (or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(read_dynamodb(stack)) >= ledger_events:
                return
        except Exception:
            pass
        time.sleep(3)


def campaign(duration: float, seed: int, hold: tuple[float, float], writers: int, pace: float,
             results: Path | None, kinds: tuple[str, ...] = KINDS) -> int:
    rng = random.Random(seed)
    root = scratch.folder("booking-ledger-partitions-", keep=bool(os.environ.get("LEDGER_PARTITIONS_KEEP")))
    history = History()
    log: list[str] = []
    began = datetime.now(UTC)
    print(f"partitions: {duration:.0f}s, seed {seed}, faults held {hold[0]:.0f}-{hold[1]:.0f}s, logs in {root}",
          flush=True)
    set_up = time.monotonic()
    with Network(log_dir=root) as net:
        stack = HostedStack(root, net, retry_seconds=RETRY_SECONDS, db_timeout=DB_TIMEOUT)
        faults: Faults | None = None
        try:
            stack.start()
            keys = {department: stack.key(department) for department in DEPARTMENTS}
            print(f"up in {time.monotonic() - set_up:.0f}s on {len(net.hosts)} hosts ({net.subnet})", flush=True)
            clients = Clients(stack.api_urls, keys, history, rng, writers, pace)
            faults = Faults(stack, net, random.Random(rng.random()), history, hold, log, kinds)
            until = time.time() + duration
            thread = threading.Thread(target=faults.run, args=(until,), name="faults")
            thread.start()
            try:
                asyncio.run(clients.run(duration))
            finally:
                faults.stopped.set()
                thread.join()
                faults.heal_all()
            faults.recover()
            drain = time.monotonic()
            while outbox_size(stack.cluster.url) != 0 and time.monotonic() - drain < 180:
                time.sleep(1)
            clients.read_feed_to_end()
            ledger, bookings = read_ledger(stack.cluster.url)
            wait_downstream(stack, len(ledger))
            final = Final(ledger, bookings, read_kafka(stack.settings.kafka.bootstrap, stack.settings.kafka.topic),
                          read_dynamodb(stack))
            verdict = check(history, final, RETRY_SECONDS, DEADLINE)
            if faults.not_recovered:
                verdict.violations["rejoined"] = faults.not_recovered
            restarts = dict(stack.restarts)
            consumer = sink_notes(root / "sink.log")
            save_history(root / "history.json", history, final)
        finally:
            stack.stop()
    report = render(verdict, history, log, seed, duration, began, restarts, consumer, str(net.subnet), hold)
    print(report)
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        name = f"{began:%Y%m%dT%H%M%SZ}-seed{seed}"
        (results / f"{name}.md").write_text(report)
        (results / f"{name}.json").write_text(json.dumps({
            "seed": seed, "duration_s": duration, "began": began.isoformat(), "ok": verdict.ok,
            "violations": verdict.violations, "unavailability": verdict.unavailability, "counts": verdict.counts,
            "faults": [asdict(f) for f in history.faults], "restarts": restarts, "sink_consumer": consumer,
        }, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
        print(f"report: {results / name}.md", flush=True)
    if verdict.ok and not os.environ.get("LEDGER_PARTITIONS_KEEP"):
        shutil.rmtree(root, ignore_errors=True)  # about 1 GB after 40 minutes; kept when something failed
    else:
        print(f"logs and history kept in {root}", flush=True)
    print("all invariants held" if verdict.ok else "INVARIANTS FAILED", flush=True)
    return 0 if verdict.ok else 1


# What the sink's log says of its consumer (cdc/sink.py): replaced after a stall, and closes cut short.
SINK_NOTES = {"replaced after a stall": "rejoining the group", "closes cut short": "did not close within"}


def sink_notes(log_file: Path) -> dict[str, int]:
    """How often the sink's log (all its runs) says each of SINK_NOTES."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return {name: text.count(words) for name, words in SINK_NOTES.items()}


def render(verdict: Verdict, history: History, log: list[str], seed: int, duration: float, began: datetime,
           restarts: dict[str, int], consumer: dict[str, int], subnet: str, hold: tuple[float, float]) -> str:
    kinds: dict[str, int] = {}
    for fault in history.faults:
        kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
    lines = [f"# Partition campaign, seed {seed}", "",
             f"Started {began:%Y-%m-%d %H:%M} UTC, {duration / 60:.0f} min of faults on {subnet} "
             f"(`make partitions DURATION={duration:.0f}s SEED={seed}`; faults held {hold[0]:.0f}-{hold[1]:.0f} s).",
             "",
             f"**{'Every invariant held' if verdict.ok else 'Invariants failed'}.** "
             f"{len(history.faults)} faults: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ".", "",
             "## Invariants", "", "| invariant | violations | first |", "| --- | --- | --- |"]
    for name in (*INVARIANTS, *(n for n in verdict.violations if n not in INVARIANTS)):
        found = verdict.violations.get(name, [])
        first = found[0].replace("|", "/") if found else ""
        lines.append(f"| {name} | {len(found)} | {first[:300]} |")
    lines += ["", "## Unavailability per fault kind (fault → first 2xx append sent after it)", "",
              "| kind | faults | p50 s | p99 s | max s | 5xx in window |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, row in verdict.unavailability.items():
        lines.append(f"| {kind} | {row['faults']:.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['max']:.2f} "
                     f"| {row['5xx']:.0f} |")
    back = writes_back(history)
    slowest = sorted(back, key=back.__getitem__, reverse=True)[:SLOWEST]
    lines += ["", f"## The {len(slowest)} slowest: writes back after the fault", "",
              "| began (UTC) | fault | held s | writes back after s |", "| --- | --- | --- | --- |"]
    for fault in slowest:
        lines.append(f"| {datetime.fromtimestamp(fault.start, UTC):%H:%M:%S} | {fault.kind} {fault.target} "
                     f"| {fault.end - fault.start:.1f} | {back[fault]:.2f} |")
    lines += ["", "## Counts", "", ", ".join(f"{k}: {v}" for k, v in verdict.counts.items()),
              f"; our processes restarted by their supervisor: {restarts or 'none'}"
              f"; the sink's consumer: {', '.join(f'{k} {n}' for k, n in consumer.items())}", "",
              "## Violations (up to 20 per invariant)", ""]
    for name, found in verdict.violations.items():
        for line in found[:20]:
            lines.append(f"- {name}: {line}")
    if verdict.ok:
        lines.append("none")
    lines += ["", "## Faults", "", "```", *log, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="3m", help="time of faults, e.g. 90s, 3m, 1h")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--hold", default="3,20", help="seconds each fault is held: min,max")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"the fault kinds to draw from, comma-separated (default: all of {', '.join(KINDS)})")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writing clients")
    parser.add_argument("--pace", type=float, default=0.15, help="mean seconds between one client's requests")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the report ('' for none)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the campaign needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    low, high = (float(x) for x in args.hold.split(","))
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    kinds = tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        print(f"unknown fault kinds: {', '.join(unknown) or '(none given)'}; known: {', '.join(KINDS)}",
              file=sys.stderr)
        return 2
    return campaign(parse_duration(args.duration), seed, (low, high), args.writers, args.pace,
                    Path(args.results) if args.results else None, kinds)


if __name__ == "__main__":
    sys.exit(main())
