"""`make bench`: the ledger against its baselines, measured side by side in one run.

    python -m bench [--smoke] [--out bench/results]

Every headline figure is a ratio against a baseline measured in the same invocation, with the
two alternating (A B A B) so that a noisy neighbour hurts both alike. Writes latest.json,
latest.md and PNG plots into --out. Never fails on a number; fails when a measurement could
not be made (the smoke run in `make test` checks exactly that).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import importing, load, pipeline, replicated, report, streaming
from bench.fill import fill
from bench.stack import Stack, fetch_value, free_port, peak_rss_mb, run_sql
from core.dynamodb import item_of
from core.settings import DynamoSettings, KafkaSettings
from devstack.processes import wait_until

BOOKINGS = 1000  # existing bookings the appends go to (BENCH-0 .. BENCH-999)
SINK_THREADS = 8  # cdc.sink.Sink's default
SECTIONS = ["throughput", "growth", "pipeline", "importing", "streaming", "audit"]  # Bench's methods, in order

# The reads' baseline: the same rows as the API's answer, built into one JSON document by Postgres
# and passed through by a plain client (bench.drivers json_read).
_EVENT_JSON = """json_build_object('event_id', event_id, 'booking_code', booking_code, 'version', version,
    'type', type, 'price', CASE WHEN price_amount IS NOT NULL
        THEN json_build_object('amount', price_amount::text, 'currency', price_currency) END,
    'data', data, 'department', department, 'occurred_at', occurred_at, 'recorded_at', recorded_at,
    'position', position)"""
BOOKING_EVENTS_JSON = f"""
SELECT json_build_object('booking_code', $1::text, 'events', coalesce(json_agg({_EVENT_JSON} ORDER BY version), '[]'),
                         'next_from_version', NULL)::text
  FROM (SELECT * FROM events WHERE booking_code = $1 ORDER BY version LIMIT $2) e"""
FEED_JSON = f"""
SELECT json_build_object('events', coalesce(json_agg({_EVENT_JSON} ORDER BY position), '[]'),
                         'next_after', max(position))::text
  FROM (SELECT * FROM events WHERE position > $1 ORDER BY position LIMIT $2) e"""


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...] = (1, 8, 32, 128, 256)
    seconds: float = 5
    rounds: int = 2
    peers: tuple[str, ...] = ("raw", "minimal", "message_db", "eventsourcing")
    grown_events: int = 1_000_000
    history_events: int = 100_000  # one booking's, for the price as of a moment
    relay_events: int = 20_000
    sink_events: int = 5_000
    e2e_rates: tuple[int, ...] = (200, 500)
    e2e_seconds: float = 60
    relay_seconds: float = 20
    e2e_warmup_seconds: float = 10
    replicated_concurrency: tuple[int, ...] = (1, 32)
    import_events: int = 200_000  # bench/importing.py
    stream_count: int = 50  # bench/streaming.py: open streams ...
    stream_rate: int = 200  # ... while appends run at this rate
    stream_seconds: float = 30
    audit_rounds: int = 4  # bench/audit_cost.py

    @classmethod
    def smoke(cls) -> Plan:
        return cls(concurrency=(1, 8, 32, 128), seconds=1, rounds=1, grown_events=2_000, history_events=1_000,
                   relay_events=300,
                   # the sink's rate leaves out its first batch (500): several batches are needed
                   sink_events=1_500,
                   e2e_rates=(50,), e2e_seconds=3, relay_seconds=2,
                   e2e_warmup_seconds=1, import_events=3_000, stream_count=10, stream_rate=50,
                   stream_seconds=2, audit_rounds=1)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(samples: list[load.Sample]) -> dict:
    return {
        "ops_per_s": round(median([s.rate for s in samples]), 1),
        "p50_ms": round(median([s.p50_ms for s in samples]), 2),
        "p99_ms": round(median([s.p99_ms for s in samples]), 2),
        "errors": sum(s.errors for s in samples),
        "rounds": [round(s.rate, 1) for s in samples],
    }


class Bench:
    def __init__(self, plan: Plan, stack: Stack, log) -> None:
        self.plan = plan
        self.stack = stack
        self.log = log
        self.results: dict = {}

    # -- 1-3, 8: appends through the API versus the baselines, and the API workers' memory -----
    def throughput(self) -> None:
        plan = self.plan
        url = self.stack.database("ledger_appends")
        fill(url, "BENCH-", BOOKINGS)
        key = self.stack.api_key(url)
        peer_urls = {"raw": url}
        if "minimal" in plan.peers:
            peer_urls["minimal"] = url  # the same tables, written without the ledger's function
        if "message_db" in plan.peers:
            peer_urls["message_db"] = self.stack.install_message_db("message_store")
        if "eventsourcing" in plan.peers:
            peer_urls["eventsourcing"] = self.stack.database("eventsourcing", migrate=False)
        api, api_url = self.stack.start_bench_api(url)
        load.api_appends(api_url, key, 8, min(2, plan.seconds), BOOKINGS)  # warm-up: pool, caches
        for peer, peer_url in peer_urls.items():
            load.driver(peer, peer_url, 8, min(2, plan.seconds), BOOKINGS)

        samples: dict[str, dict[int, list[load.Sample]]] = {s: {} for s in ("api", *peer_urls)}
        for c in plan.concurrency:
            for _ in range(plan.rounds):
                for peer, peer_url in peer_urls.items():  # A B A C A D ...: the API next to each peer
                    samples["api"].setdefault(c, []).append(load.api_appends(api_url, key, c, plan.seconds, BOOKINGS))
                    samples[peer].setdefault(c, []).append(load.driver(peer, peer_url, c, plan.seconds, BOOKINGS))
                    self.log(f"  {c:>3} in flight: api {samples['api'][c][-1].rate:7.0f}/s  "
                             f"{peer} {samples[peer][c][-1].rate:7.0f}/s")
        self.results["throughput"] = {
            system: {str(c): summarize(runs) for c, runs in by_c.items()} for system, by_c in samples.items()
        }
        # Ratios per round: each API run against the peer run right after it.
        ratios: dict[str, dict[str, float]] = {}
        for peer in peer_urls:
            per_c = {}
            for c in plan.concurrency:
                api_runs = samples["api"][c][list(peer_urls).index(peer)::len(peer_urls)]
                pairs = zip(api_runs, samples[peer][c], strict=True)
                per_c[str(c)] = round(median([a.rate / p.rate for a, p in pairs if p.rate]), 3)
            ratios[f"api_vs_{peer}"] = per_c
        self.results["ratios"] = ratios
        self.results["memory"] = {"api_worker_peak_rss_mb": [round(peak_rss_mb(pid) or 0, 1) for pid in api.pids()[1:]]}
        api.stop()

    # -- what the hash chain and sealed personal data cost an append (issue 29) -------------------
    def audit(self) -> None:
        from bench import audit_cost  # it uses bench.experiment, which imports this module

        self.results["audit"] = audit = audit_cost.measure(self.stack, self.plan.audit_rounds, self.plan.seconds,
                                                           self.log)
        for mix in audit_cost.MIXES:
            self.log(f"  head vs 0015, data.personal in {mix}: {audit[mix]['head_vs_0015']} (appends/s), "
                     f"{audit[mix]['head_vs_0015_by_raw']} (by the ratio to raw)")

    # -- the cost of synchronous replication: one Postgres against make run-ha's cluster ------------
    def replicated(self) -> None:
        plan = self.plan
        self.results["replicated"] = replicated.measure(self.stack, plan.replicated_concurrency, plan.seconds,
                                                        plan.rounds, BOOKINGS, self.log, summarize)

    # -- 7: growth ---------------------------------------------------------------------------
    def growth(self) -> None:
        plan = self.plan
        empty_url = self.stack.database("ledger_empty")
        grown_url = self.stack.database("ledger_grown")
        started = time.monotonic()
        for url in (empty_url, grown_url):
            fill(url, "BENCH-", BOOKINGS)
            fill(url, "BIG", 1, appends=10, per_append=100)  # one booking with 1,000 events
        per_append = 100
        fill(grown_url, "G", max(2, plan.grown_events // per_append // 100), appends=plan.grown_events // per_append,
             per_append=per_append, parallel=2)
        # One booking with a long history (one event in two priced by bench.fill's 123.45 EUR is
        # every event; the as-of answer must not depend on the count either way).
        fill(grown_url, "HIST", 1, appends=max(1, plan.history_events // 1000), per_append=1000)
        for url in (empty_url, grown_url):
            run_sql(url, "TRUNCATE outbox", "VACUUM ANALYZE")
        events = fetch_value(grown_url, "SELECT count(*) FROM events")
        self.log(f"  grown ledger: {events} events, made in {time.monotonic() - started:.0f} s")
        apis = {}
        for name, url in (("empty", empty_url), ("grown", grown_url)):
            apis[name] = (*self.stack.start_bench_api(url), self.stack.api_key(url, ("read", "write")), url)
        for _, api_url, key, _ in apis.values():
            load.api_appends(api_url, key, 8, min(2, plan.seconds), BOOKINGS)
        appends: dict[str, list[load.Sample]] = {"empty": [], "grown": []}
        for _ in range(plan.rounds):
            for name, (_, api_url, key, _) in apis.items():
                appends[name].append(load.api_appends(api_url, key, 32, plan.seconds, BOOKINGS))
        reads = {name: self._reads(api_url, key, url) for name, (_, api_url, key, url) in apis.items()}
        _, grown_api, grown_key, _ = apis["grown"]
        middle_time = fetch_value(grown_url, "SELECT to_char(recorded_at AT TIME ZONE 'UTC', "
                                             "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM events "
                                             "WHERE booking_code = 'HIST0' AND version = $1", plan.history_events // 2)
        history = fetch_value(grown_url, "SELECT version FROM bookings WHERE code = 'HIST0'")
        price_as_of = {
            "events_of_the_booking": history,
            "at_recorded": summarize([load.api_reads(
                grown_api, grown_key, f"/v1/bookings/HIST0/price?at={middle_time}", 8, plan.seconds)]),
            "at_occurred": summarize([load.api_reads(
                grown_api, grown_key, f"/v1/bookings/HIST0/price?at={middle_time}&clock=occurred", 8, plan.seconds)]),
            "at_version": summarize([load.api_reads(
                grown_api, grown_key, f"/v1/bookings/HIST0/price?version={plan.history_events // 2}", 8,
                plan.seconds)]),
            # The same at 1 in flight: the answer's own time, without the queueing of 8 on 2 shared CPUs.
            "at_recorded_1_in_flight": summarize([load.api_reads(
                grown_api, grown_key, f"/v1/bookings/HIST0/price?at={middle_time}", 1, plan.seconds)]),
            "booking_1_in_flight": summarize([load.api_reads(
                grown_api, grown_key, "/v1/bookings/BENCH-1", 1, plan.seconds)]),
        }
        for api, *_ in apis.values():
            api.stop()
        ratios = [g.rate / e.rate for e, g in zip(appends["empty"], appends["grown"], strict=True) if e.rate]
        self.results["growth"] = {
            "events_in_grown_ledger": events,
            "appends_at_32": {name: summarize(runs) for name, runs in appends.items()},
            "growth_ratio": round(median(ratios), 3),
            "reads": reads,
            "price_as_of": price_as_of,
        }

    def _reads(self, api_url: str, key: str, url: str) -> dict:
        """A 1,000-event booking and a 500-event feed page at 8 in flight, through the API and as
        Postgres-built JSON passed through (alternating), and the ratio per round."""
        middle = fetch_value(url, "SELECT position FROM events ORDER BY position OFFSET "
                                  "(SELECT count(*) / 2 FROM events) LIMIT 1")
        cases = {"booking_1000_events": ("/v1/bookings/BIG0/events?limit=1000", BOOKING_EVENTS_JSON, ["BIG0", 1000]),
                 "feed_page_500": (f"/v1/events?after={middle}&limit=500", FEED_JSON, [middle, 500])}
        found: dict[str, dict] = {}
        for case, (path, query, arguments) in cases.items():
            api_runs, json_runs = [], []
            for _ in range(self.plan.rounds):
                api_runs.append(load.api_reads(api_url, key, path, 8, self.plan.seconds))
                json_runs.append(load.json_reads(url, query, arguments, 8, self.plan.seconds))
            found[case] = {**summarize(api_runs), "postgres_json": summarize(json_runs),
                           "api_vs_postgres_json": round(median(
                               [a.rate / j.rate for a, j in zip(api_runs, json_runs, strict=True) if j.rate]), 3)}
        return found

    # -- import and the live stream (issue 15): bench/importing.py, bench/streaming.py ----------
    def importing(self) -> None:
        self.results["importing"] = importing.phase(self.stack, self.plan.import_events, self.log)

    def streaming(self) -> None:
        plan = self.plan
        self.results["streaming"] = streaming.phase(self.stack, plan.stream_count, plan.stream_rate,
                                                    plan.stream_seconds, self.log)

    # -- 4-6: relay, sink, end to end ----------------------------------------------------------
    def pipeline(self) -> None:
        plan = self.plan
        self.stack.start_pipeline_servers()
        url = self.stack.database("ledger_pipeline")
        key = self.stack.api_key(url)
        broker, dynamodb = self.stack.broker, self.stack.dynamodb
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        dynamo_settings = DynamoSettings(endpoint=dynamodb.endpoint, region="eu-west-1")
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        relay_port, sink_port = free_port(), free_port()
        relay = self.stack.start("relay", url, LEDGER_RELAY_METRICS_PORT=str(relay_port))
        wait_until(lambda: _metric(relay_port, "ledger_relay_leader") == 1, 60, 0.2, "relay leadership")

        # Relay: drain a backlog of `relay_events` versus a raw produce of the same messages.
        relay_runs, raw_runs = [], []
        for n in range(plan.rounds):
            relay.process.send_signal(19)  # SIGSTOP: the backlog builds up while it is frozen
            try:
                fill(url, f"RELAY{n}-", max(1, plan.relay_events // 100), per_append=100)
                backlog, _ = pipeline.outbox(url)
            finally:
                relay.process.send_signal(18)  # SIGCONT
            started = time.perf_counter()
            wait_until(lambda: pipeline.outbox(url)[0] == 0, 300, 0.02, "relay drain")
            relay_runs.append(backlog / (time.perf_counter() - started))
            messages = pipeline.messages_of(pipeline.ledger_events(url, backlog))
            raw_runs.append(len(messages) / pipeline.raw_produce(kafka, f"bench-raw-{n}", messages))
            self.log(f"  relay {relay_runs[-1]:7.0f} events/s   raw produce {raw_runs[-1]:7.0f} msgs/s")

        # Sink: the same `sink_events` events from a topic of their own into DynamoDB, versus boto3.
        events = pipeline.ledger_events(url, plan.sink_events)
        items = [item_of(e) for e in events]
        sink_runs, boto_runs = [], []
        pipeline.raw_batch_write(dynamo_settings, "bench_warm_up", items, SINK_THREADS)  # DynamoDB Local's JIT
        # A run is timed from the first scrape that sees a write to the one that sees them all: on a
        # busy machine the first may already see them all, and the run is made again (twice at most).
        for n in range(plan.rounds + 3):
            if len(sink_runs) == plan.rounds + 1:
                break
            topic = f"bench-sink-{n}"
            pipeline.raw_produce(kafka, topic, pipeline.messages_of(events))
            sink = self.stack.start("sink", url, LEDGER_KAFKA_TOPIC=topic, LEDGER_SINK_GROUP=f"bench-sink-{n}",
                                    LEDGER_DYNAMODB_TABLE=f"bench_sink_{n}", LEDGER_SINK_METRICS_PORT=str(sink_port))
            first = wait_until(
                lambda: (_metric(sink_port, "ledger_sink_written_total") or 0) > 0 and time.perf_counter(),
                120, 0.02, "sink start")
            written = _metric(sink_port, "ledger_sink_written_total") or 0
            wait_until(lambda: (_metric(sink_port, "ledger_sink_written_total") or 0) >= len(events),
                                300, 0.02, "sink drain")
            drained = time.perf_counter()
            sink.stop()
            if written >= len(events):
                self.log(f"  sink wrote all {len(events)} items before its first scrape: not timed, made again")
                continue
            sink_runs.append((len(events) - written) / (drained - first))
            boto_seconds = pipeline.raw_batch_write(dynamo_settings, f"bench_raw_{n}", items, SINK_THREADS)
            boto_runs.append(len(items) / boto_seconds)
            self.log(f"  sink {sink_runs[-1]:7.0f} items/s   raw boto3 {boto_runs[-1]:7.0f} items/s")
        if not sink_runs:
            raise RuntimeError("the sink wrote every item before its first scrape in every run: none was timed")

        # End to end: a steady rate of new bookings through the API; lag = commit to DynamoDB.
        # A topic of its own (made beforehand, so the new relay does not resend the relay runs' events).
        relay.stop()
        pipeline.ensure_topic(kafka, "bench-e2e")
        relay = self.stack.start("relay", url, LEDGER_KAFKA_TOPIC="bench-e2e",
                                 LEDGER_RELAY_METRICS_PORT=str(relay_port))
        wait_until(lambda: _metric(relay_port, "ledger_relay_leader") == 1, 60, 0.2, "relay leadership")
        api, api_url = self.stack.start_bench_api(url)
        # The relay alone under a steady rate of appends (the sink and DynamoDB Local idle).
        relay_at_rate = {}
        for rate in plan.e2e_rates:
            before = pipeline.scrape(relay_port)
            driver = load.paced(api_url, key, rate, plan.relay_seconds)
            _, err = driver.communicate(timeout=plan.relay_seconds + 120)
            if driver.returncode != 0:
                raise RuntimeError(f"paced load failed: {err[-2000:]}")
            wait_until(lambda: pipeline.outbox(url)[0] == 0, 120, 0.1, "relay caught up")
            delta = _delta(pipeline.scrape(relay_port), before)
            relay_at_rate[str(rate)] = {
                **pipeline.histogram_quantiles(delta, "ledger_relay_commit_to_ack_seconds"),
                "share_within_100ms": _share_within(delta, "ledger_relay_commit_to_ack_seconds", 0.1),
            }
            self.log(f"  relay alone at {rate}/s: commit-to-ack {relay_at_rate[str(rate)]}")
        sink = self.stack.start("sink", url, LEDGER_KAFKA_TOPIC="bench-e2e", LEDGER_SINK_METRICS_PORT=str(sink_port))
        # The sink starts at the topic's beginning: wait until it has written all the relay sent so far,
        # then a warm-up at the first rate (the first seconds on a new table are slow), not measured.
        def sink_caught_up() -> None:
            wait_until(lambda: (_metric(sink_port, "ledger_sink_written_total") or 0)
                              >= (_metric(relay_port, "ledger_relay_sent_total") or 1), 300, 0.2, "sink caught up")

        sink_caught_up()
        warm = load.paced(api_url, key, plan.e2e_rates[0], plan.e2e_warmup_seconds)
        warm.communicate(timeout=plan.e2e_warmup_seconds + 120)
        sink_caught_up()
        e2e = {}
        relay_before = pipeline.scrape(relay_port)
        for rate in plan.e2e_rates:
            probe = pipeline.LagProbe(url, dynamo_settings, every=max(1, rate // 50))
            probe.start()
            before = pipeline.scrape(relay_port)
            driver = load.paced(api_url, key, rate, plan.e2e_seconds)
            out, err = driver.communicate(timeout=plan.e2e_seconds + 120)
            if driver.returncode != 0:
                raise RuntimeError(f"paced load failed: {err[-2000:]}")
            sent = json.loads(out)
            probe.stop(drain_timeout=120)
            relay_metrics = _delta(pipeline.scrape(relay_port), before)
            lags = sorted(lag for _, lag in probe.lags)
            e2e[str(rate)] = {
                "load": sent,
                "lag_samples": len(lags),
                "lag_not_seen": probe.unseen,
                "lag_p50_ms": _ms(load.quantile(lags, 0.5)),
                "lag_p99_ms": _ms(load.quantile(lags, 0.99)),
                "relay_commit_to_ack": pipeline.histogram_quantiles(relay_metrics,
                                                                    "ledger_relay_commit_to_ack_seconds"),
                "lag_series": [(round(t, 2), round(lag * 1000, 1)) for t, lag in probe.lags],
                "backlog_series": [(round(t, 2), n, round(age, 3)) for t, n, age in probe.backlog],
            }
            run = e2e[str(rate)]
            self.log(f"  {rate}/s for {plan.e2e_seconds:.0f} s: lag p50 {run['lag_p50_ms']} ms, "
                     f"p99 {run['lag_p99_ms']} ms; relay commit-to-ack {run['relay_commit_to_ack']}")
        relay_all = _delta(pipeline.scrape(relay_port), relay_before)
        self.results["memory"].update({
            "relay_peak_rss_mb": round(peak_rss_mb(relay.process.pid) or 0, 1),
            "sink_peak_rss_mb": round(peak_rss_mb(sink.process.pid) or 0, 1),
        })
        api.stop()
        sink.stop()
        relay.stop()
        self.results["relay"] = {
            "backlog_events": plan.relay_events,
            "relay_events_per_s": round(median(relay_runs), 1),
            "raw_produce_per_s": round(median(raw_runs), 1),
            "relay_vs_raw": round(median([a / b for a, b in zip(relay_runs, raw_runs, strict=True)]), 3),
            "commit_to_ack_at_rate": relay_at_rate,
            "commit_to_ack_under_e2e_load": pipeline.histogram_quantiles(relay_all,
                                                                         "ledger_relay_commit_to_ack_seconds"),
            "commit_to_ack_share_within_100ms_under_e2e_load": _share_within(
                relay_all, "ledger_relay_commit_to_ack_seconds", 0.1),
        }
        self.results["sink"] = {
            "events": plan.sink_events,
            "sink_items_per_s": round(median(sink_runs), 1),
            "raw_boto3_items_per_s": round(median(boto_runs), 1),
            "raw_boto3_threads": SINK_THREADS,
            "sink_vs_raw": round(median([a / b for a, b in zip(sink_runs, boto_runs, strict=True)]), 3),
        }
        self.results["e2e"] = e2e


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _metric(port: int, name: str) -> float | None:
    try:
        return pipeline.scrape(port).get(name)
    except OSError:
        return None


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _share_within(metrics: dict[str, float], name: str, bound: float) -> float | None:
    total = metrics.get(f'{name}_count')
    within = metrics.get(f'{name}_bucket{{le="{bound}"}}')
    return round(within / total, 4) if total and within is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds of each measurement (for the tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--only", choices=[*SECTIONS, "replicated"], action="append")
    args = parser.parse_args()
    plan = Plan.smoke() if args.smoke else Plan()
    # The replicated cluster takes half a minute to start: the smoke run leaves it to tests/ha.
    sections = args.only or [*SECTIONS, *([] if args.smoke else ["replicated"])]
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    load_seen: list[float] = []
    sampling = threading.Event()

    def sample_load() -> None:
        while True:
            load_seen.append(os.getloadavg()[0])
            if sampling.wait(5):
                return

    threading.Thread(target=sample_load, daemon=True).start()
    stack = Stack(Path(tempfile.mkdtemp(prefix="booking-ledger-bench-")))
    bench = Bench(plan, stack, log)
    bench.results.update({"memory": {}, "errors": {}})
    try:
        stack.start_postgres()
        for section in sections:
            log(f"{section} ...")
            try:
                getattr(bench, section)()
            except Exception as error:  # record it, go on with the next part, fail at the end
                bench.results["errors"][section] = f"{type(error).__name__}: {error}"
                log(f"{section} failed:\n{traceback.format_exc()}")
    finally:
        stack.stop()
        sampling.set()
    if bench.results["errors"]:
        log(f"kept {stack.folder} for the failed parts' logs")
    else:
        stack.remove()
    bench.results["meta"] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "seconds": round(time.monotonic() - started),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        # How busy the machine was (1-minute load average, every 5 s): a shared machine's other work
        # shows here, and a run beside much of it is one to repeat.
        "load_average": {"median": round(median(load_seen), 1), "max": round(max(load_seen, default=0), 1)},
        "plan": plan.__dict__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report.write(bench.results, args.out)
    log(f"wrote {args.out / 'latest.md'}")
    if bench.results["errors"]:
        raise SystemExit(f"bench: {len(bench.results['errors'])} part(s) could not be measured: "
                         f"{', '.join(bench.results['errors'])}")
