"""The chaos soak: steady mixed load while a fault injector kills, freezes and restarts every part.

    .venv/bin/python -m tests.soak.soak --duration 10m      (make soak DURATION=10m)
    .venv/bin/python -m tests.soak.soak --ha --duration 10m (make soak HA=1 DURATION=10m)

It starts a whole private stack on free loopback ports (Postgres, Apache Kafka, DynamoDB Local, the
API with two workers, two relays, a sink) and keeps the workers running the way supervisord does.
Kafka is one KRaft node, or with --ha a cluster of three (replication factor 3, min.insync.replicas
2), whose broker faults then hit one node at a time.
With --ha, Postgres is the replicated cluster of devstack.ha (etcd, three Patroni nodes), and the
Postgres restart among the faults becomes node faults: the leader or a replica killed (-9) and
started again, the leader frozen past its TTL (a failover) or briefly, then thawed.
The load generator records every acknowledged event. After the faults stop and the pipeline
drains, it checks the promises and prints a summary; the exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cdc.replay import replay
from cdc.verify import verify
from core import dynamodb
from core.pg import connect_primary
from core.settings import DynamoSettings, KafkaSettings, Settings
from devstack.ha import HACluster, PatroniNode
from devstack.harness import CLI, LedgerProcess, Stack, as_role, free_port
from devstack.kafka import KafkaNode
from devstack.processes import wait_for_port, wait_until
from tests import scratch

DEPARTMENTS = ("hotel", "car", "flight")
FAULTS = ("kill_api_worker", "kill_relay", "kill_sink", "freeze_broker", "freeze_dynamodb",
          "restart_broker", "restart_dynamodb", "restart_postgres")
HA_FAULTS = (*FAULTS[:-1], "kill_leader", "kill_replica", "freeze_leader")


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


class SoakStack(Stack):
    """The harness's private stack (persistent DynamoDB Local), our processes restarted when they die
    (as supervisord would)."""

    def __init__(self, root: Path, ha: bool = False) -> None:
        super().__init__(root)
        self.cluster = HACluster.on_free_ports(root / "ha") if ha else None
        self.api_port = free_port()
        self.workers: dict[str, LedgerProcess] = {}
        self.restarts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def database_url(self) -> str:
        """The ledger's URL: the cluster's multi-host URL with --ha."""
        return self.cluster.url if self.cluster else self.postgres.url

    @property
    def ledger_settings(self) -> Settings:
        return self.settings(self.database_url, kafka=KafkaSettings(bootstrap=self.broker.bootstrap),
                             dynamo=DynamoSettings(endpoint=self.dynamodb.endpoint, region="eu-west-1"))

    def worker_env(self) -> dict[str, str]:
        return self.env(self.ledger_settings, LEDGER_HTTP_PORT=str(self.api_port), LEDGER_HTTP_WORKERS="2",
                        LEDGER_RATE_LIMIT="0", LEDGER_DB_TIMEOUT="5")

    def start_all(self) -> None:
        if self.cluster:
            self.cluster.start()
        else:
            self.start_postgres()
        self.start_pipeline_servers(dynamodb_data=self.folder / "dynamodb", kafka_nodes=3 if self.cluster else 1)
        subprocess.run([CLI, "migrate"], env=self.worker_env(), check=True, capture_output=True)
        for name in ("api", "relay-a", "relay-b", "sink"):
            self._spawn(name)
        wait_for_port(self.api_port, 60)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _spawn(self, name: str) -> None:
        kind = name.split("-")[0]
        self.workers[name] = LedgerProcess(kind, self.worker_env(), self.folder / f"{name}.log").start()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for name, process in self.workers.items():
                    if not process.alive:
                        self.restarts[name] += 1
                        self._spawn(name)
            time.sleep(0.5)

    def kill(self, name: str) -> None:
        with self._lock:
            self.workers[name].kill()

    def api_worker_pids(self) -> list[int]:
        return self.workers["api"].pids()[1:]

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self.processes = list(self.workers.values())
            super().stop()
        if self.cluster:
            self.cluster.stop()


@dataclass
class Booking:
    code: str
    department: str
    version: int = 0


@dataclass
class Record:
    """What the load generator saw: every acknowledged event and every answer."""

    acknowledged: dict[str, tuple[str, int, dict]] = field(default_factory=dict)  # event_id -> (code, version, body)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[tuple[float, int, str]] = field(default_factory=list)  # (time, status, body)
    writes: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered) of 2xx appends, monotonic
    violations: list[str] = field(default_factory=list)
    collisions: int = 0
    gave_up: int = 0


class Load:
    def __init__(self, url: str, keys: dict[str, str], record: Record, rng: random.Random) -> None:
        self.url, self.keys, self.record, self.rng = url, keys, record, rng
        self.bookings: list[Booking] = []
        self.done_requests: list[tuple[str, str, dict]] = []  # (department, code, body) of acknowledged appends
        self.busy: set[str] = set()

    async def run(self, rate: float, seconds: float) -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=self.url, timeout=15, limits=limits) as client:
            tasks: set[asyncio.Task] = set()
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds:
                n += 1
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                task = asyncio.create_task(self.one(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

    async def send(self, client: httpx.AsyncClient, department: str, method: str, path: str,
                   body: dict | None = None) -> httpx.Response | None:
        """One request, retried with the same body on 503 or a lost connection (clients are told to)."""
        for attempt in range(40):
            sent = time.monotonic()
            try:
                response = await client.request(method, path, json=body,
                                                headers={"Authorization": f"Bearer {self.keys[department]}"})
            except httpx.TransportError:
                await asyncio.sleep(0.5)
                continue
            self.record.statuses[response.status_code] += 1
            if method == "POST" and response.status_code in (200, 201):
                self.record.writes.append((sent, time.monotonic()))
            if response.status_code >= 500:
                self.record.server_errors.append((time.time(), response.status_code, response.text[:200]))
                if response.status_code == 503 and "Retry-After" not in response.headers:
                    self.record.violations.append("503 without Retry-After")
                if response.status_code == 503:
                    await asyncio.sleep(min(2.0, 0.25 * (attempt + 1)))
                    continue
            return response
        self.record.gave_up += 1
        return None

    def events(self, count: int) -> list[dict]:
        return [{"event_id": str(uuid.uuid4()), "type": self.rng.choice(["BookingPriced", "PriceChanged", "Discount"]),
                 "price": {"amount": f"{self.rng.randint(1, 99999)}.{self.rng.randint(0, 99):02d}", "currency": "EUR"},
                 "data": {"n": self.rng.randint(0, 10**6), "note": "soak"}} for _ in range(count)]

    def acknowledge(self, response: httpx.Response, body: dict) -> None:
        answer = response.json()
        sent = body["events"]
        got = answer["events"]
        if [e["event_id"] for e in got] != [e["event_id"] for e in sent]:
            self.record.violations.append(f"answer for {answer['booking_code']} carries other events")
        for event, original in zip(got, sent, strict=False):
            self.record.acknowledged[event["event_id"]] = (event["booking_code"], event["version"], original)

    async def one(self, client: httpx.AsyncClient) -> None:
        roll = self.rng.random()
        own = [b for b in self.bookings if b.code not in self.busy]
        if roll < 0.25 or not own:
            await self.create(client)
        elif roll < 0.35:
            await self.collide(client)
        elif roll < 0.75:
            await self.append(client, self.rng.choice(own), expect=self.rng.random() < 0.7)
        elif roll < 0.85 and self.done_requests:
            await self.retry(client)
        else:
            await self.read(client, self.rng.choice(own))

    async def create(self, client: httpx.AsyncClient) -> None:
        department = self.rng.choice(DEPARTMENTS)
        booking = Booking(f"SOAK-{uuid.uuid4().hex[:12]}", department)
        body = {"expected_version": 0, "events": self.events(self.rng.randint(1, 3))}
        self.busy.add(booking.code)
        try:
            response = await self.send(client, department, "POST", f"/v1/bookings/{booking.code}/events", body)
            if response is not None and response.status_code in (200, 201):
                self.acknowledge(response, body)
                booking.version = response.json()["version"]
                self.bookings.append(booking)
                self.done_requests.append((department, booking.code, body))
            elif response is not None:
                self.record.violations.append(f"create {booking.code}: {response.status_code} {response.text[:120]}")
        finally:
            self.busy.discard(booking.code)

    async def collide(self, client: httpx.AsyncClient) -> None:
        if not self.bookings:
            return
        target = self.rng.choice(self.bookings)
        department = self.rng.choice([d for d in DEPARTMENTS if d != target.department])
        body = {"expected_version": 0, "events": self.events(1)}
        response = await self.send(client, department, "POST", f"/v1/bookings/{target.code}/events", body)
        if response is None:
            return
        self.record.collisions += 1
        if response.status_code != 409 or response.json().get("code") != "booking_code_taken":
            self.record.violations.append(f"collision on {target.code} answered {response.status_code}")
        elif response.json().get("department") != target.department:
            self.record.violations.append(f"{target.code} has owner {response.json().get('department')}, "
                                          f"created by {target.department}")

    async def append(self, client: httpx.AsyncClient, booking: Booking, expect: bool) -> None:
        body: dict = {"events": self.events(self.rng.randint(1, 2))}
        if expect:
            body["expected_version"] = booking.version
        self.busy.add(booking.code)
        try:
            response = await self.send(client, booking.department, "POST", f"/v1/bookings/{booking.code}/events", body)
            if response is not None and response.status_code in (200, 201):
                self.acknowledge(response, body)
                booking.version = response.json()["version"]
                self.done_requests.append((booking.department, booking.code, body))
            elif response is not None:
                self.record.violations.append(f"append {booking.code}: {response.status_code} {response.text[:120]}")
        finally:
            self.busy.discard(booking.code)

    async def retry(self, client: httpx.AsyncClient) -> None:
        department, code, body = self.rng.choice(self.done_requests)
        response = await self.send(client, department, "POST", f"/v1/bookings/{code}/events", body)
        if response is None:
            return
        # 200; 201 when the API's own first try of this resend lost its answer in a failover or a
        # restart and its next try found the events (docs/api.md: both mean stored, with the same body).
        if response.status_code not in (200, 201):
            self.record.violations.append(f"retry on {code} answered {response.status_code} {response.text[:120]}")
        elif [e["event_id"] for e in response.json()["events"]] != [e["event_id"] for e in body["events"]]:
            self.record.violations.append(f"retry on {code} returned other events")

    async def read(self, client: httpx.AsyncClient, booking: Booking) -> None:
        known = booking.version
        response = await self.send(client, booking.department, "GET", f"/v1/bookings/{booking.code}/events?limit=1000")
        if response is None:
            return
        if response.status_code != 200:
            self.record.violations.append(f"read {booking.code}: {response.status_code}")
            return
        versions = [e["version"] for e in response.json()["events"]]
        if versions[: known] != list(range(1, known + 1)):
            self.record.violations.append(f"read-your-writes: {booking.code} at v{known} read {versions[:5]}...")


class Faults:
    def __init__(self, stack: SoakStack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng
        self.counts: collections.Counter = collections.Counter()
        self.postgres_windows: list[tuple[float, float]] = []  # wall-clock windows of Postgres faults
        self.failovers: list[float] = []  # monotonic times of faults that made a new leader

    def run(self, stop: threading.Event, every: tuple[float, float]) -> None:
        kinds = HA_FAULTS if self.stack.cluster else FAULTS
        while not stop.wait(self.rng.uniform(*every)):
            fault = self.rng.choice(kinds)
            getattr(self, fault)()
            self.counts[fault] += 1

    def kill_api_worker(self) -> None:
        pids = self.stack.api_worker_pids()
        if pids:
            os.kill(self.rng.choice(pids), signal.SIGKILL)  # granian starts a new worker

    def kill_relay(self) -> None:
        self.stack.kill(self.rng.choice(["relay-a", "relay-b"]))

    def kill_sink(self) -> None:
        self.stack.kill("sink")

    def _freeze(self, server) -> None:
        server.freeze()
        time.sleep(self.rng.uniform(1, 4))
        server.thaw()

    def _broker_node(self) -> KafkaNode:
        return self.rng.choice(self.stack.broker.nodes)

    def freeze_broker(self) -> None:
        self._freeze(self._broker_node())

    def freeze_dynamodb(self) -> None:
        self._freeze(self.stack.dynamodb)

    def restart_broker(self) -> None:
        node = self._broker_node()
        node.kill()
        time.sleep(self.rng.uniform(0.5, 2))
        node.start(timeout=180)  # a JVM on a busy machine can take a minute

    def restart_dynamodb(self) -> None:
        self.stack.dynamodb.kill()
        time.sleep(self.rng.uniform(0.5, 2))
        self.stack.dynamodb.start()

    def restart_postgres(self) -> None:
        began = time.time()
        self.stack.postgres.stop(mode="fast")
        time.sleep(self.rng.uniform(0.5, 2))
        self.stack.postgres.start()
        self.postgres_windows.append((began, time.time()))


    # Node faults (--ha): one at a time, and each waits until the cluster has its two streaming
    # replicas again, so that faults never add up to two lost nodes (which stops writes by design).

    def _node_fault(self, fault) -> None:
        cluster = self.stack.cluster
        assert cluster is not None
        began = time.time()
        leader = cluster.wait_ready()
        fault(cluster, leader)
        cluster.wait_replicas(2, timeout=120)
        self.postgres_windows.append((began, time.time()))

    def kill_leader(self) -> None:
        def fault(cluster: HACluster, leader: PatroniNode) -> None:
            leader.kill()
            self.failovers.append(time.monotonic())
            wait_until(lambda: (p := cluster.primary()) and p is not leader, timeout=60, what="a new leader")
            leader.start()

        self._node_fault(fault)

    def kill_replica(self) -> None:
        def fault(cluster: HACluster, leader: PatroniNode) -> None:
            replica = self.rng.choice([n for n in cluster.nodes if n is not leader])
            replica.kill()
            time.sleep(self.rng.uniform(1, 5))
            replica.start()

        self._node_fault(fault)

    def freeze_leader(self) -> None:
        def fault(cluster: HACluster, leader: PatroniNode) -> None:
            past_ttl = self.rng.random() < 0.5
            leader.freeze()
            at = time.monotonic()
            if past_ttl:  # a failover; the thawed old leader must acknowledge nothing
                self.failovers.append(at)
                wait_until(lambda: (p := cluster.primary()) and p is not leader, timeout=60, what="a new leader")
                time.sleep(self.rng.uniform(0, 3))
            else:
                time.sleep(self.rng.uniform(1, 4))
            leader.thaw()

        self._node_fault(fault)


class LagSampler:
    """Now and then, the time from an acknowledged create until its item is in DynamoDB."""

    def __init__(self, stack: SoakStack, record: Record) -> None:
        self.stack, self.record = stack, record
        self.lags: list[float] = []
        self.unseen = 0

    def run(self, stop: threading.Event) -> None:
        client = dynamodb.client(self.stack.ledger_settings.dynamo)
        table = self.stack.ledger_settings.dynamo.table
        while not stop.wait(2.0):
            try:  # the load generator adds to the dict meanwhile
                event_id, (code, version, _) = next(reversed(self.record.acknowledged.items()))
            except (StopIteration, RuntimeError):
                continue
            acked = time.monotonic()
            while not stop.is_set():
                try:
                    found = client.get_item(TableName=table, Key={"booking_code": {"S": code},
                                                                  "version": {"N": str(version)}})
                    if "Item" in found:
                        self.lags.append(time.monotonic() - acked)
                        break
                except Exception:
                    pass
                if time.monotonic() - acked > 60:
                    self.unseen += 1  # lost with a broker restart, or very late: replay covers it
                    break
                time.sleep(0.05)


async def check_ledger(stack: SoakStack, record: Record) -> None:
    conn = await connect_primary(stack.database_url, timeout=30)
    try:
        ids = list(record.acknowledged)
        rows = await conn.fetch(
            "SELECT event_id::text, booking_code, version, type, price_amount::text, price_currency, data::text "
            "FROM events WHERE event_id = ANY($1::uuid[])", ids)
        stored = {r["event_id"]: r for r in rows}
        for event_id, (code, version, body) in record.acknowledged.items():
            row = stored.get(event_id)
            if row is None:
                record.violations.append(f"acknowledged event {event_id} ({code} v{version}) is not in the ledger")
                continue
            price = body.get("price")
            same = (row["booking_code"], row["version"], row["type"]) == (code, version, body["type"]) and (
                price is None or (row["price_amount"], row["price_currency"]) == (price["amount"], price["currency"]))
            if not same:
                record.violations.append(f"event {event_id} differs in the ledger from what was acknowledged")
        gaps = await conn.fetch(
            "SELECT b.code FROM bookings b JOIN events e ON e.booking_code = b.code GROUP BY b.code, b.version "
            "HAVING min(e.version) <> 1 OR max(e.version) <> count(*) OR max(e.version) <> b.version")
        record.violations.extend(f"versions of {r['code']} are not 1..n" for r in gaps)
        duplicates = await conn.fetchval("SELECT count(*) - count(DISTINCT event_id) FROM events")
        if duplicates:
            record.violations.append(f"{duplicates} duplicated event ids in the ledger")
    finally:
        await conn.close()


def outbox_size(stack: SoakStack) -> int:
    async def run() -> int:
        conn = await connect_primary(stack.database_url, timeout=30)
        try:
            return await conn.fetchval("SELECT count(*) FROM outbox")
        finally:
            await conn.close()

    return asyncio.run(run())


def unavailability(record: Record, since: float) -> float:
    """Seconds from `since` to the first 2xx append sent after it."""
    return min((done for sent, done in record.writes if sent >= since), default=float("inf")) - since


def soak(duration: float, rate: float, seed: int, fault_every: tuple[float, float], ha: bool = False) -> int:
    rng = random.Random(seed)
    root = scratch.folder("booking-ledger-soak-")
    stack = SoakStack(root, ha=ha)
    record = Record()
    where = " on the HA cluster" if ha else ""
    print(f"soak{where}: {duration:.0f}s at {rate:.0f} requests/s, faults every {fault_every[0]:.0f}-"
          f"{fault_every[1]:.0f}s, seed {seed}, logs in {root}", flush=True)
    stack.start_all()
    try:
        keys = {}
        for department in DEPARTMENTS:
            out = subprocess.run([CLI, "keys", "create", "--department", department],
                                 env=as_role(stack.worker_env(), "keys"),
                                 check=True, capture_output=True, text=True).stdout
            keys[department] = out.strip().splitlines()[-1]
        faults = Faults(stack, rng)
        sampler = LagSampler(stack, record)
        stop = threading.Event()
        threads = [threading.Thread(target=faults.run, args=(stop, fault_every)),
                   threading.Thread(target=sampler.run, args=(stop,))]
        for thread in threads:
            thread.start()
        asyncio.run(Load(f"http://127.0.0.1:{stack.api_port}", keys, record, rng).run(rate, duration))
        stop.set()
        for thread in threads:
            thread.join()

        # Faults are over: let the pipeline drain, then check every promise.
        drain_started = time.monotonic()
        while outbox_size(stack) and time.monotonic() - drain_started < 180:
            time.sleep(1)
        if outbox_size(stack):
            record.violations.append("the outbox did not drain within 180 s after the faults stopped")
        settings = stack.ledger_settings
        # The sink may still be writing what the relay sent last: look until there is no drift,
        # for up to two minutes.
        settle_started = time.monotonic()
        report = asyncio.run(verify(settings, grace=5))
        while report.drift and time.monotonic() - settle_started < 120:
            time.sleep(10)
            report = asyncio.run(verify(settings, grace=5))
        drift_before_replay = len(report.drift)
        if report.drift:
            # The documented repair, so that the report says whether it works; the drift itself is a violation.
            asyncio.run(replay(settings, progress=False))
            report = asyncio.run(verify(settings, grace=5))
        if report.drift:
            record.violations.append(f"{len(report.drift)} drift between ledger and DynamoDB after replay: "
                                     + "; ".join(map(str, report.drift[:5])))
        if drift_before_replay:
            record.violations.append(f"{drift_before_replay} drift remained two minutes after the outbox drained "
                                     "(repaired by replay, but the pipeline should have healed itself)")
        asyncio.run(check_ledger(stack, record))
        for at, status, body in record.server_errors:
            in_window = any(start - 1 <= at <= end + 15 for start, end in faults.postgres_windows)
            if ha:  # the API rides through node faults within its retry budget: no 5xx at all
                record.violations.append(f"{status} during the HA soak: {body}")
            elif status != 503 or not in_window:
                record.violations.append(f"{status} outside a Postgres restart: {body}")
    finally:
        stack.stop()

    lags = sorted(sampler.lags)
    print("\n=== soak summary ===")
    print(f"requests by status: {dict(sorted(record.statuses.items()))}, gave up after retries: {record.gave_up}")
    print(f"events acknowledged: {len(record.acknowledged)} in {len({c for c, _, _ in record.acknowledged.values()})} "
          f"bookings; collision attempts rejected: {record.collisions}")
    print(f"faults injected: {dict(sorted(faults.counts.items()))}; worker restarts: {dict(stack.restarts)}")
    if ha:
        gaps = sorted(unavailability(record, at) for at in faults.failovers)
        shown = f"p50 {statistics.median(gaps):.1f}s, max {gaps[-1]:.1f}s" if gaps else "none"
        print(f"failovers: {len(faults.failovers)}; write unavailability (fault to first 2xx): {shown}; "
              f"5xx answers: {sum(n for status, n in record.statuses.items() if status >= 500)}; "
              f"acknowledged events lost: {sum('is not in the ledger' in v for v in record.violations)}")
    if lags:
        print(f"replication lag (sampled creates): p50 {lags[len(lags) // 2]:.2f}s, max {lags[-1]:.2f}s, "
              f"samples {len(lags)}, not seen within 60 s: {sampler.unseen}")
    print(f"drift before replay: {drift_before_replay}; "
          f"after: {len(report.drift)}; ledger events checked: {report.events}")
    if record.violations:
        print(f"VIOLATIONS ({len(record.violations)}):")
        for violation in record.violations[:50]:
            print(f"  - {violation}")
        return 1
    print("all invariants held")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10m", help="e.g. 60s, 10m, 1h")
    parser.add_argument("--rate", type=float, default=40, help="requests per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fault-every", default="4,10", help="seconds between faults: min,max")
    parser.add_argument("--ha", action="store_true", help="on the replicated cluster (devstack.ha), with node faults")
    args = parser.parse_args(argv)
    low, high = (float(x) for x in args.fault_every.split(","))
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    return soak(parse_duration(args.duration), args.rate, seed, (low, high), ha=args.ha)


if __name__ == "__main__":
    sys.exit(main())
