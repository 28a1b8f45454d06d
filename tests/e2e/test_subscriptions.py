"""Subscriptions end to end: the API, the real `booking-ledger deliver` worker and real HTTP receivers
(a threaded stdlib server in this process), on the suite's Postgres.

The worker runs with a 2 s retry window and 1 s timeouts, so that a failing receiver pauses its
subscription within seconds; the ordered-delivery test sends 1,000 events (the issue's 10,000 are
the bench's scale, not the suite's)."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from booking_ledger_client import (
    AsyncLedgerClient,
    InvalidSignature,
    LedgerClient,
    NewEvent,
    SubscriptionNotFound,
    SubscriptionNotPaused,
    WebhookUrlRefused,
    delivered_events,
    verify_signature,
)

from core.settings import DatabaseSettings, Settings
from devstack.harness import LedgerProcess, free_port, process_env
from devstack.postgres import LocalPostgres
from devstack.processes import wait_until
from migrations.runner import upgrade
from tests import scratch
from tests.conftest import random_code
from tests.e2e.conftest import Server, auth, cli, make_key, signed_in, start_server
from tests.e2e.test_http import assert_problem, events_url

RETRY_SECONDS = 2
LIMIT = 4  # subscriptions per department (the most one test makes), for the limit test
WEBHOOK_ENV = {"LEDGER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "LEDGER_WEBHOOK_RETRY_SECONDS": str(RETRY_SECONDS),
               "LEDGER_WEBHOOK_TIMEOUT_SECONDS": "1", "LEDGER_WEBHOOK_MAX_PER_DEPARTMENT": str(LIMIT),
               "LEDGER_WEBHOOK_BATCH_MAX": "50"}


@dataclass
class Delivery:
    name: str  # which receiver (the path's last part)
    headers: dict[str, str]
    body: bytes
    answered: int | None  # the status the receiver answered (None: it hung up or hung)

    @property
    def events(self) -> list[dict]:
        events: list[dict] = json.loads(self.body)
        return events


@dataclass
class Receiver:
    """Receivers at http://127.0.0.1:PORT/r/NAME; `modes[NAME]` says how each answers: ok, fail (500),
    hang (never answers), redirect (302 to /r/NAME-target), close (hangs up mid-answer), slow (ok after 0.3 s)."""

    url: str = ""
    modes: dict[str, str] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)  # ends every hang at teardown
    in_flight: threading.Event = field(default_factory=threading.Event)  # a slow answer is being waited for

    def at(self, name: str, mode: str = "ok") -> str:
        self.modes[name] = mode
        return f"{self.url}/r/{name}"

    def got(self, name: str, answered: int | None = 200) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.name == name and d.answered == answered]

    def received_ids(self, name: str) -> list[str]:
        """Event ids acknowledged to `name`, first occurrences in arrival order."""
        seen: dict[str, None] = {}
        for delivery in self.got(name):
            for event in delivery.events:
                seen.setdefault(event["event_id"], None)
        return list(seen)

    def attempts(self, name: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.name == name]


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            name = self.path.rsplit("/", 1)[-1]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            mode = receiver.modes.get(name, "ok")
            answered: int | None = {"ok": 200, "slow": 200, "fail": 500, "redirect": 302}.get(mode)
            with receiver.lock:
                receiver.deliveries.append(Delivery(name, dict(self.headers.items()), body, answered))
            if mode == "hang":
                receiver.released.wait(30)
                self.close_connection = True
                return
            if mode == "close":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                self.wfile.flush()
                self.close_connection = True
                return
            if mode == "slow":
                receiver.in_flight.set()
                time.sleep(0.3)
            self.send_response(answered or 500)
            if mode == "redirect":
                self.send_header("Location", f"/r/{name}-target")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    server.daemon_threads = True
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found.released.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def subs_api(database_url: str) -> Iterator[Server]:
    server = start_server(database_url, workers=1, LEDGER_RATE_LIMIT="0", **WEBHOOK_ENV)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Worker:
    """The `deliver` worker of this module; `restart()` starts a new one (after a kill)."""

    env: dict[str, str]
    metrics_url: str
    process: LedgerProcess | None = None

    def start(self) -> None:
        log = scratch.folder("booking-ledger-deliver-") / "deliver.log"
        self.process = LedgerProcess("deliver", self.env, log).start()
        self.process.wait_for_log("deliver is the leader", timeout=30)

    def metrics(self) -> str:
        try:
            return httpx.get(self.metrics_url, timeout=2).text
        except httpx.HTTPError:
            return ""


@pytest.fixture(scope="module")
def worker(database_url: str) -> Iterator[Worker]:
    port = free_port()
    env = process_env(Settings(database=DatabaseSettings(url=database_url)), LEDGER_DELIVER_METRICS_PORT=str(port),
                      **WEBHOOK_ENV)
    running = Worker(env, f"http://127.0.0.1:{port}/metrics")
    running.start()
    try:
        yield running
    finally:
        assert running.process is not None
        running.process.stop()


def department() -> str:
    return f"subs-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def subscriber(database_url: str) -> str:
    """A key that subscribes, reads and writes (its own department's bookings)."""
    return make_key(database_url, department(), "read,write,subscribe")


def subscribe(api: str, key: str, url: str, **filters: str) -> dict:
    answer = httpx.post(f"{api}/v1/subscriptions", json={"url": url, "filters": filters}, headers=auth(key),
                        timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()


def subscription(api: str, key: str, subscription_id: str) -> dict:
    answer = httpx.get(f"{api}/v1/subscriptions/{subscription_id}", headers=auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def append(api: str, key: str, code: str, types: list[str], expected_version: int | None = 0) -> list[dict]:
    body: dict = {"events": [{"type": t} for t in types]}
    if expected_version is not None:
        body["expected_version"] = expected_version
    answer = httpx.post(events_url(api, code), json=body, headers=auth(key), timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["events"]


def paused(api: str, key: str, subscription_id: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (s := subscription(api, key, subscription_id))["status"] == "paused" and s,
                      timeout, what=f"subscription {subscription_id} to pause")


def wait_for_ids(receiver: Receiver, name: str, wanted: list[str], timeout: float = 60) -> None:
    wait_until(lambda: set(wanted) <= set(receiver.received_ids(name)), timeout,
               what=f"{len(wanted)} events at receiver {name}")


def test_events_arrive_in_order_at_three_filtered_subscriptions_signed(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str, subscriber: str) -> None:
    api = subs_api.url
    department_a = department()
    writer_a = make_key(database_url, department_a, "read,write")
    writer_b = make_key(database_url, department(), "read,write")
    wanted_type = f"Priced{uuid.uuid4().hex[:8]}"
    codes = [random_code("SUB") for _ in range(20)]
    by_department = subscribe(api, subscriber, receiver.at("by-department"), department=department_a)
    by_type = subscribe(api, subscriber, receiver.at("by-type"), type=wanted_type)
    by_code = subscribe(api, subscriber, receiver.at("by-code"), booking_code=codes[13])
    assert by_type["status"] == "active" and by_type["secret"].startswith("whsec_")
    written: list[dict] = []
    for index, code in enumerate(codes):  # 20 bookings x 50 events: 1,000 events
        key = writer_a if index < 10 else writer_b
        written += append(api, key, code, [wanted_type if i % 2 == 0 else "Other" for i in range(50)])
    expected = {
        "by-department": [e for e in written if e["booking_code"] in codes[:10]],
        "by-type": [e for e in written if e["type"] == wanted_type],
        "by-code": [e for e in written if e["booking_code"] == codes[13]],
    }
    secret_of = {"by-department": by_department["secret"], "by-type": by_type["secret"],
               "by-code": by_code["secret"]}
    for name, events in expected.items():
        wait_for_ids(receiver, name, [e["event_id"] for e in events])
        in_order = sorted(events, key=lambda e: e["position"])
        assert receiver.received_ids(name) == [e["event_id"] for e in in_order], name
        for delivery in receiver.got(name):
            signature = delivery.headers["Ledger-Signature"]
            verify_signature(secret_of[name], signature, delivery.body)
            with pytest.raises(InvalidSignature):
                verify_signature(secret_of["by-code" if name != "by-code" else "by-type"], signature, delivery.body)
            with pytest.raises(InvalidSignature):
                verify_signature(secret_of[name], signature, delivery.body + b" ")
            positions = [e["position"] for e in delivery.events]
            assert positions == sorted(positions) and len(positions) <= 50
            assert delivery.headers["Ledger-Subscription"] in {by_department["id"], by_type["id"], by_code["id"]}
    shown = subscription(api, subscriber, by_code["id"])
    assert shown["status"] == "active" and shown["delivered_events"] == 50 and "secret" not in shown
    assert shown["position"] == expected["by-code"][-1]["position"]
    listed = httpx.get(f"{api}/v1/subscriptions", headers=auth(subscriber), timeout=10).json()["subscriptions"]
    assert {s["id"] for s in listed} >= {by_department["id"], by_type["id"], by_code["id"]}
    for created in (by_department, by_type, by_code):
        assert httpx.delete(f"{api}/v1/subscriptions/{created['id']}", headers=auth(subscriber),
                            timeout=10).status_code == 204


def test_deliveries_carry_the_hash_and_personal_data_sealed_as_kafka_does_then_erased(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    api, key = subs_api.url, make_key(database_url, department(), "read,write,subscribe,erase")
    code = random_code("SEALED")
    marker = f"Traveller-{uuid.uuid4().hex}"
    live = subscribe(api, key, receiver.at("sealed"), booking_code=code)
    answer = httpx.post(events_url(api, code), headers=auth(key), timeout=30, json={"expected_version": 0, "events": [
        {"type": "Booked", "data": {"reason": "x", "personal": {"name": marker}}}, {"type": "Note"}]})
    assert answer.status_code == 201, answer.text
    written = answer.json()["events"]
    wait_for_ids(receiver, "sealed", [e["event_id"] for e in written], timeout=30)
    sent = {e["event_id"]: e for d in receiver.got("sealed") for e in d.events}
    assert sent[written[0]["event_id"]]["data"]["personal"].startswith("enc:v1:")  # what Kafka carries
    assert marker not in json.dumps(list(sent.values()))
    for event in written:  # the rest as the API answers it, the chain's hash included
        assert {**sent[event["event_id"]], "data": None} == {**event, "data": None} and len(event["hash"]) == 64

    erased = httpx.post(f"{api}/v1/bookings/{code}/erase", headers=auth(key), timeout=30)
    assert erased.status_code == 201, erased.text
    ids = [e["event_id"] for e in written] + [erased.json()["event"]["event_id"]]
    wait_for_ids(receiver, "sealed", ids[2:], timeout=30)
    # A subscription from before the booking, made after its erasure: its events come erased.
    later = httpx.post(f"{api}/v1/subscriptions", headers=auth(key), timeout=10, json={
        "url": receiver.at("erased"), "filters": {"booking_code": code}, "after": written[0]["position"] - 1})
    assert later.status_code == 201, later.text
    wait_for_ids(receiver, "erased", ids, timeout=30)
    again = {e["event_id"]: e for d in receiver.got("erased") for e in d.events}
    assert again[written[0]["event_id"]]["data"] == {"reason": "x", "personal": "erased"}
    assert [again[i]["hash"] for i in ids[:2]] == [e["hash"] for e in written]
    for created in (live, later.json()):
        assert httpx.delete(f"{api}/v1/subscriptions/{created['id']}", headers=auth(key), timeout=10).status_code == 204


def test_a_failing_receiver_pauses_its_subscription_on_the_event_until_resumed(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    api, key = subs_api.url, make_key(database_url, department(), "read,write,subscribe")
    code = random_code("PAUSE")
    created = subscribe(api, key, receiver.at("pause", "fail"), booking_code=code)
    events = append(api, key, code, ["A", "B", "C"])
    shown = paused(api, key, created["id"])
    assert shown["paused_position"] == events[0]["position"] and shown["paused_event_id"] == events[0]["event_id"]
    assert shown["last_status"] == 500 and shown["reason"] == "HTTP 500" and shown["attempts"] >= 2
    attempts = receiver.attempts("pause")
    # The first try carried the batch; every retry carries its first event alone, under one delivery id.
    assert [e["event_id"] for e in attempts[0].events][0] == events[0]["event_id"]
    retries = attempts[1:]
    assert retries and all([e["event_id"] for e in r.events] == [events[0]["event_id"]] for r in retries)
    assert len({r.headers["Ledger-Delivery"] for r in retries}) == 1
    receiver.modes["pause"] = "ok"
    # The console shows it to the department, and refuses a resume that does not come from its own page.
    cookie = signed_in(api, key)
    page = httpx.get(f"{api}/console/subscriptions", headers=cookie, timeout=10)
    assert page.status_code == 200 and created["id"] in page.text and events[0]["event_id"] in page.text
    assert "HTTP 500" in page.text and f"/console/subscriptions/{created['id']}/resume" in page.text
    forged = httpx.post(f"{api}/console/subscriptions/{created['id']}/resume",
                        headers={**cookie, "Origin": "https://elsewhere.example"}, timeout=10)
    assert forged.status_code == 403 and subscription(api, key, created["id"])["status"] == "paused"
    assert len(receiver.attempts("pause")) == len(attempts)  # paused: nothing more is tried
    resumed = httpx.post(f"{api}/v1/subscriptions/{created['id']}/resume", headers=auth(key), timeout=10)
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    wait_for_ids(receiver, "pause", [e["event_id"] for e in events], timeout=30)
    assert receiver.received_ids("pause") == [e["event_id"] for e in events]
    assert_problem(httpx.post(f"{api}/v1/subscriptions/{created['id']}/resume", headers=auth(key), timeout=10),
                   409, "subscription_not_paused")


def test_skip_passes_exactly_the_event_it_is_paused_on_and_records_it(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    api, key = subs_api.url, make_key(database_url, department(), "read,write,subscribe")
    code = random_code("SKIP")
    created = subscribe(api, key, receiver.at("skip", "fail"), booking_code=code)
    poison, after = append(api, key, code, ["Poison", "After"])
    shown = paused(api, key, created["id"])
    assert shown["paused_event_id"] == poison["event_id"]
    receiver.modes["skip"] = "ok"
    skipped = httpx.post(f"{api}/v1/subscriptions/{created['id']}/skip", headers=auth(key), timeout=10)
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["status"] == "active" and skipped.json()["skipped_events"] == 1
    assert skipped.json()["position"] == poison["position"]
    wait_for_ids(receiver, "skip", [after["event_id"]], timeout=30)
    assert receiver.received_ids("skip") == [after["event_id"]]


def test_each_failing_receiver_pauses_only_its_own_subscription(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    """Hanging (timeout), hanging up mid-answer and redirecting receivers pause theirs; a redirect is
    not followed; a healthy receiver meanwhile gets its events."""
    api, key = subs_api.url, make_key(database_url, department(), "read,write,subscribe")
    modes = {"hang": "no answer within|timed out", "close": "no answer", "redirect": "HTTP 302: redirects"}
    created, written = {}, {}
    for mode in modes:
        code = random_code(mode.upper())
        created[mode] = subscribe(api, key, receiver.at(f"bad-{mode}", mode), booking_code=code)
        written[mode] = append(api, key, code, ["A"])
    healthy_code = random_code("HEALTHY")
    subscribe(api, key, receiver.at("healthy"), booking_code=healthy_code)
    healthy = append(api, key, healthy_code, ["A", "B"])
    wait_for_ids(receiver, "healthy", [e["event_id"] for e in healthy], timeout=30)
    for mode, reason in modes.items():
        shown = paused(api, key, created[mode]["id"])
        assert re.search(reason, shown["reason"]), shown
        assert shown["paused_event_id"] == written[mode][0]["event_id"]
    assert paused(api, key, created["redirect"]["id"])["last_status"] == 302
    assert receiver.attempts("bad-redirect-target") == []


def test_a_worker_killed_mid_delivery_is_followed_by_one_that_redelivers_and_loses_nothing(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    api, key = subs_api.url, make_key(database_url, department(), "read,write,subscribe")
    code = random_code("KILL")
    subscribe(api, key, receiver.at("kill", "slow"), booking_code=code)
    events = append(api, key, code, ["A"] * 100) + append(api, key, code, ["B"] * 100, expected_version=None)
    wait_until(lambda: len(receiver.got("kill")) >= 1, 30, what="a first delivery")
    receiver.in_flight.clear()
    wait_until(receiver.in_flight.is_set, 30, interval=0.01, what="a delivery in flight")
    interrupted = receiver.attempts("kill")[-1]
    assert worker.process is not None
    worker.process.kill()
    worker.start()
    wait_for_ids(receiver, "kill", [e["event_id"] for e in events], timeout=60)
    assert receiver.received_ids("kill") == [e["event_id"] for e in events]
    again = [d for d in receiver.got("kill") if d.headers["Ledger-Delivery"] == interrupted.headers["Ledger-Delivery"]]
    assert len(again) == 2 and again[0].body == again[1].body  # the same batch, the same id, once more


def test_a_standby_worker_takes_over_when_the_leader_dies(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    api, key = subs_api.url, make_key(database_url, department(), "read,write,subscribe")
    code = random_code("STANDBY")
    subscribe(api, key, receiver.at("standby"), booking_code=code)
    port = free_port()
    standby = LedgerProcess("deliver", {**worker.env, "LEDGER_DELIVER_METRICS_PORT": str(port)},
                            scratch.folder("booking-ledger-deliver-") / "standby.log").start()
    standby.wait_for_log("deliver is standby", timeout=30)
    assert worker.process is not None
    worker.process.kill()
    worker.process, worker.metrics_url = standby, f"http://127.0.0.1:{port}/metrics"  # the module's worker now
    standby.wait_for_log("deliver is the leader", timeout=30)
    events = append(api, key, code, ["A", "B"])
    wait_for_ids(receiver, "standby", [e["event_id"] for e in events], timeout=30)


def test_a_revoked_keys_subscriptions_stop(
        subs_api: Server, worker: Worker, receiver: Receiver, database_url: str) -> None:
    api = subs_api.url
    team = department()
    revoked, probe_key = (make_key(database_url, team, "read,write,subscribe") for _ in range(2))
    code = random_code("REVOKE")
    stopped = subscribe(api, revoked, receiver.at("revoked"), booking_code=code)
    probe = subscribe(api, probe_key, receiver.at("probe"), booking_code=code)
    label = f'subscription="{stopped["id"]}"'
    wait_until(lambda: label in worker.metrics(), 30, what="the worker to deliver to the subscription")
    assert cli(database_url, "keys", "revoke", revoked.split("_")[1]).returncode == 0
    assert subscription(api, probe_key, stopped["id"])["status"] == "stopped"
    wait_until(lambda: label not in worker.metrics(), 30, what="the worker to stop the revoked key's subscription")
    events = append(api, probe_key, code, ["A"])
    wait_for_ids(receiver, "probe", [events[0]["event_id"]], timeout=30)
    assert receiver.attempts("revoked") == []
    assert probe["status"] == "active"


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # the metadata address, over http
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/",
    "https://127.0.0.2:9/hook",  # loopback, not an allowed host
    "https://localhost/hook",  # a name that resolves to loopback
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://10.1.2.3/hook",
    "https://100.64.0.1/hook",
    "https://0.0.0.0/hook",
    "http://example.com/hook",  # plain http to a host not allowed
    "ftp://example.com/hook",
    "https://user:password@example.com/hook",
    "https://exa mple.com/hook",
    "/relative",
])
def test_receivers_that_would_reach_inside_are_refused(subs_api: Server, subscriber: str, url: str) -> None:
    answer = httpx.post(f"{subs_api.url}/v1/subscriptions", json={"url": url}, headers=auth(subscriber), timeout=10)
    assert_problem(answer, 422, "webhook_url_refused")


def test_scope_ownership_and_the_limit(subs_api: Server, receiver: Receiver, database_url: str) -> None:
    api = subs_api.url
    key, other = (make_key(database_url, department(), "read,write,subscribe") for _ in range(2))
    no_scope = make_key(database_url, department(), "read,write")
    assert_problem(httpx.get(f"{api}/v1/subscriptions", headers=auth(no_scope), timeout=10), 403, "forbidden")
    assert_problem(httpx.get(f"{api}/v1/subscriptions", timeout=10), 401, "unauthorized")
    made = [subscribe(api, key, receiver.at("limit"), booking_code=random_code("LIM")) for _ in range(LIMIT)]
    assert_problem(httpx.post(f"{api}/v1/subscriptions", json={"url": receiver.at("limit")}, headers=auth(key),
                              timeout=10), 409, "subscription_limit")
    assert_problem(httpx.get(f"{api}/v1/subscriptions/{made[0]['id']}", headers=auth(other), timeout=10),
                   404, "subscription_not_found")
    assert_problem(httpx.delete(f"{api}/v1/subscriptions/{made[0]['id']}", headers=auth(other), timeout=10),
                   404, "subscription_not_found")
    assert_problem(httpx.get(f"{api}/v1/subscriptions/not-an-id", headers=auth(key), timeout=10),
                   404, "subscription_not_found")
    assert_problem(httpx.post(f"{api}/v1/subscriptions", json={"url": receiver.at("limit"), "filters": {"x": "y"}},
                              headers=auth(key), timeout=10), 422, "validation_error")
    assert httpx.delete(f"{api}/v1/subscriptions/{made[0]['id']}", headers=auth(key), timeout=10).status_code == 204
    subscribe(api, key, receiver.at("limit"), booking_code=random_code("LIM"))
    assert httpx.get(f"{api}/v1/subscriptions", headers=auth(other), timeout=10).json() == {"subscriptions": []}


def test_delivery_goes_on_after_the_ledgers_postgres_restarts(receiver: Receiver) -> None:
    base = scratch.folder("booking-ledger-subs-restart-")
    server = LocalPostgres(base / "pg", free_port())
    server.start()
    upgrade(server.url)
    api = start_server(server.url, workers=1, LEDGER_RATE_LIMIT="0", **WEBHOOK_ENV)
    port = free_port()
    own = Worker(process_env(Settings(database=DatabaseSettings(url=server.url)),
                             LEDGER_DELIVER_METRICS_PORT=str(port), **WEBHOOK_ENV), f"http://127.0.0.1:{port}/metrics")
    try:
        own.start()
        key = make_key(server.url, department(), "read,write,subscribe")
        code = random_code("PGR")
        subscribe(api.url, key, receiver.at("restart"), booking_code=code)
        before = append(api.url, key, code, ["A"] * 5)
        wait_for_ids(receiver, "restart", [e["event_id"] for e in before], timeout=30)
        server.stop("fast")
        server.start()
        body = {"events": [{"event_id": str(uuid.uuid4()), "type": "B"} for _ in range(5)]}

        def appended() -> list[dict] | None:  # 503 until the API's pool reaches Postgres again; same event ids
            answer = httpx.post(events_url(api.url, code), json=body, headers=auth(key), timeout=15)
            return answer.json()["events"] if answer.status_code in (200, 201) else None

        after = wait_until(appended, 60, interval=0.5, what="an append after the restart")
        everything = [e["event_id"] for e in before + after]
        wait_for_ids(receiver, "restart", everything, timeout=60)
        assert receiver.received_ids("restart") == everything
    finally:
        if own.process is not None:
            own.process.stop()
        api.stop()
        server.stop(mode="immediate")


async def test_the_client_library_manages_subscriptions(subs_api: Server, worker: Worker, receiver: Receiver,
                                                        database_url: str) -> None:
    key = make_key(database_url, department(), "read,write,subscribe")
    code = random_code("CLIENT")
    with LedgerClient(subs_api.url, key, retry_seconds=5) as client:
        made = client.create_subscription(receiver.at("client"), filters={"booking_code": code})
        assert made.subscription.status == "active" and made.secret.startswith("whsec_")
        assert [s.id for s in client.subscriptions()] == [made.subscription.id]
        with pytest.raises(SubscriptionNotPaused):
            client.resume_subscription(made.subscription.id)
        with pytest.raises(WebhookUrlRefused):
            client.create_subscription("https://169.254.169.254/latest/meta-data/")
        event = client.create(code, [NewEvent("BookingPriced")]).events[0]
        wait_for_ids(receiver, "client", [str(event.event_id)], timeout=30)
        delivery = receiver.got("client")[0]
        verify_signature(made.secret, delivery.headers["Ledger-Signature"], delivery.body)
        assert [e.event_id for e in delivered_events(delivery.body)] == [event.event_id]
        shown = client.subscription(made.subscription.id)
        assert shown.delivered_events == 1 and shown.position == event.position
    async with AsyncLedgerClient(subs_api.url, key, retry_seconds=5) as async_client:
        await async_client.delete_subscription(made.subscription.id)
        with pytest.raises(SubscriptionNotFound):
            await async_client.subscription(made.subscription.id)
