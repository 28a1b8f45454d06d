"""Years of data: a ledger grown through the import path, measured at each step beside one that stays small.

    .venv/bin/python -m bench.scale --out bench/results/scale      # 1 M, 5 M and 20 M events: about an hour, ~25 GB
    .venv/bin/python -m bench.scale --steps 5000 20000 --seconds 1 --rounds 1 --tail 1000   # in miniature

Two databases on one private Postgres: `grown` is filled by `booking-ledger import` (bench/importing.py's
files: 4 departments, bookings of 1-9 events, about 5 events a booking) up to each step; `small` holds the
same base (1,000 bookings the appends go to, one 1,000-event booking for the reads) and nothing more.
At each step, and at 0, both are measured alike, alternating, and the figures are ratios grown/small:

- the outbox drain: `tail` more events imported while the relay is frozen, then the time the real relay
  (real Kafka) takes to empty the outbox;
- `replay --after` and `verify --since` of those `tail` events into DynamoDB Local (the nightly run);
- appends through the API at 1 and 32 in flight (wrk, bench/load.lua: one in four creates a booking);
- the price as of a moment and a booking read at 1 in flight, a 500-event feed page at 8 in flight;
- on `grown` only: disk per event (heap, TOAST and each index of events, bookings and outbox), the
  import's rate for the step, and what autovacuum did (Postgres' log of every autovacuum run).

Results go to --out as latest.json and latest.md, rewritten after each step (a run cut short keeps
what it measured).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench import load
from bench.fill import fill
from bench.importing import history_file, import_env
from bench.pipeline import outbox, scrape
from bench.run import median, summarize
from bench.stack import LedgerProcess, Stack, fetch_value, free_port, run_sql
from bench.verifying import run_cli
from cdc.kafka import ensure_topic
from devstack.harness import CLI
from devstack.processes import wait_until

BOOKINGS = 1000  # the bookings the appends go to (BENCH-0 .. BENCH-999), in both databases
TABLES = ("events", "bookings", "outbox")
# A production Postgres gives shared_buffers a good part of its memory; the bench's default (256 MB)
# would measure the buffer manager's churn, not the ledger.
SCALE_SETTINGS = {"shared_buffers": "'2GB'", "log_autovacuum_min_duration": "0"}


@dataclass
class Ledger:
    """One of the two databases, with its API and the settings its relay and commands use."""

    name: str
    url: str
    api: LedgerProcess
    key: str
    env: dict[str, str]
    relay_port: int = field(default_factory=free_port)

    @property
    def api_url(self) -> str:
        return self.api.url


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def import_files(url: str, paths: list[Path]) -> None:
    """`booking-ledger import` of each file, all at once (one process each), as the import's role."""
    env = import_env(url)
    running = [subprocess.Popen([CLI, "import", "--quiet", str(p)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for p in paths]
    for process, path in zip(running, paths, strict=True):
        out, _ = process.communicate(timeout=7200)
        if process.returncode != 0:
            raise RuntimeError(f"import of {path.name} failed ({process.returncode}): {out[-2000:]}")


def grow(url: str, folder: Path, events: int, chunk: int, importers: int, seeds: Iterator[int], log) -> dict:
    """Import `events` more events in files of at most `chunk`, `importers` at a time. Seconds count the
    imports only (not the writing of the files)."""
    done, seconds = 0, 0.0
    while done < events:
        share = min(chunk, -(-(events - done) // importers))
        batch = []
        for _ in range(importers):
            size = min(share, events - done)
            if size <= 0:
                break
            path = folder / f"grow-{len(batch)}.jsonl"
            history_file(path, size, seed=next(seeds))
            done += size
            batch.append(path)
        started = time.perf_counter()
        import_files(url, batch)
        seconds += time.perf_counter() - started
        for path in batch:
            path.unlink()
        log(f"    imported {done:,} of {events:,} ({done / seconds:,.0f} events/s so far)")
    return {"events": events, "seconds": round(seconds, 1), "events_per_s": round(events / seconds, 1)}


def leading(port: int) -> bool:
    try:
        return scrape(port).get("ledger_relay_leader") == 1
    except OSError:  # not listening yet
        return False


def relay_drain(stack: Stack, ledger: Ledger, folder: Path, tail: int, seed: int) -> tuple[float, int]:
    """(events/s, position before them) of the relay emptying an outbox of `tail` new events.

    The relay starts on an empty outbox, takes the lead and is frozen; the events are imported;
    the clock runs from the moment it is let go until the outbox is empty."""
    relay = stack.start("relay", ledger.url, LEDGER_RELAY_METRICS_PORT=str(ledger.relay_port),
                        LEDGER_KAFKA_TOPIC=f"scale-{ledger.name}")
    try:
        wait_until(lambda: leading(ledger.relay_port), 120, 0.2, "relay leadership")
        relay.process.send_signal(19)  # SIGSTOP
        try:
            before = int(fetch_value(ledger.url, "SELECT coalesce(max(position), 0) FROM events"))
            path = folder / f"tail-{ledger.name}.jsonl"
            history_file(path, tail, seed=seed)
            import_files(ledger.url, [path])
            path.unlink()
            backlog, _ = outbox(ledger.url)
        finally:
            relay.process.send_signal(18)  # SIGCONT
        started = time.perf_counter()
        wait_until(lambda: outbox(ledger.url)[0] == 0, 600, 0.05, "relay drain")
        return backlog / (time.perf_counter() - started), before
    finally:
        relay.stop()


def nightly(ledger: Ledger, after: int, tail: int) -> dict:
    """`replay --after` and `verify --since` of the events above `after`: events/s of each."""
    replayed, _, _, _ = run_cli(ledger.env, "replay", "--quiet", "--after", str(after))
    verified, _, out, _ = run_cli(ledger.env, "verify", "--grace", "0", "--since", str(after))
    return {"replay_events_per_s": round(tail / replayed, 1), "verify_since_events_per_s": round(tail / verified, 1),
            "verify_said": out.splitlines()[-1] if out else ""}


def compared(runs: dict[str, list[load.Sample]]) -> dict:
    """Medians per ledger, and grown/small per round for the rate and p99."""
    found: dict = {name: summarize(samples) for name, samples in runs.items()}
    pairs = list(zip(runs["small"], runs["grown"], strict=True))
    found["rate_ratio"] = round(median([g.rate / s.rate for s, g in pairs if s.rate]), 3)
    found["p99_ratio"] = round(median([g.p99_ms / s.p99_ms for s, g in pairs if s.p99_ms]), 3)
    return found


def price_path(url: str) -> str:
    """The price of the 1,000-event booking as of the moment its 500th event was recorded."""
    moment = fetch_value(url, "SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
                              "FROM events WHERE booking_code = 'BIG0' AND version = 500")
    return f"/v1/bookings/BIG0/price?at={moment}"


def feed_path(url: str) -> str:
    """A 500-event page from the middle of the feed."""
    middle = fetch_value(url, "SELECT position FROM events ORDER BY position OFFSET "
                              "(SELECT count(*) / 2 FROM events) LIMIT 1")
    return f"/v1/events?after={middle}&limit=500"


def api_figures(ledgers: dict[str, Ledger], seconds: float, rounds: int) -> dict:
    """Appends at 1 and 32 in flight, then the reads, each grown next to small, `rounds` times."""
    paths = {"price_as_of_1": {name: price_path(ledger.url) for name, ledger in ledgers.items()},
             "booking_1": {name: "/v1/bookings/BENCH-1" for name in ledgers},
             "feed_page_500_at_8": {name: feed_path(ledger.url) for name, ledger in ledgers.items()}}
    cases = ["appends_1", "appends_32", *paths]
    runs: dict[str, dict[str, list[load.Sample]]] = {case: {"small": [], "grown": []} for case in cases}
    for ledger in ledgers.values():  # warm-up: pools, caches, prepared statements
        load.api_appends(ledger.api_url, ledger.key, 8, 1, BOOKINGS)
    for _ in range(rounds):
        for case in cases:
            for name in ("small", "grown"):
                ledger = ledgers[name]
                if case.startswith("appends_"):
                    s = load.api_appends(ledger.api_url, ledger.key, int(case.split("_")[1]), seconds, BOOKINGS)
                else:
                    in_flight = 8 if case.endswith("_at_8") else 1
                    s = load.api_reads(ledger.api_url, ledger.key, paths[case][name], in_flight, seconds)
                runs[case][name].append(s)
    return {case: compared(by_name) for case, by_name in runs.items()}


DISK_SQL = """
SELECT c.relname AS relation, t.relname AS of_table, pg_relation_size(c.oid) AS bytes
  FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid
 WHERE t.relname = ANY($1::text[])
UNION ALL
SELECT relname, relname, pg_relation_size(oid) FROM pg_class WHERE relname = ANY($1::text[])
UNION ALL
SELECT t.relname || ' (TOAST)', t.relname, pg_total_relation_size(t.reltoastrelid) FROM pg_class t
 WHERE t.relname = ANY($1::text[]) AND t.reltoastrelid <> 0
"""


def disk(url: str) -> dict:
    """Bytes of each table, its TOAST and each of its indexes, and bytes per event."""

    async def run() -> dict:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CHECKPOINT")
            rows = await conn.fetch(DISK_SQL, list(TABLES))
            events = await conn.fetchval("SELECT count(*) FROM events")
            database = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
        relations = {r["relation"]: {"table": r["of_table"], "bytes": r["bytes"],
                                     "bytes_per_event": round(r["bytes"] / events, 1)} for r in rows}
        return {"events": events, "database_bytes": database, "database_bytes_per_event": round(database / events, 1),
                "relations": relations}

    return asyncio.run(run())


_AUTOVACUUM = re.compile(r'automatic (vacuum|analyze) of table "([^".]+)\.[^".]+\.([^"]+)".*?elapsed: ([\d.]+) s',
                         re.S)


def autovacuum(log_text: str, database: str) -> dict:
    """Runs and seconds of autovacuum per table and kind in `database`, from Postgres' log
    (log_autovacuum_min_duration = 0)."""
    found: dict[str, dict[str, float]] = {}
    for kind, db, table, elapsed in _AUTOVACUUM.findall(log_text):
        if db == database and table in TABLES:
            entry = found.setdefault(f"{table} {kind}", {"runs": 0, "seconds": 0.0})
            entry["runs"] += 1
            entry["seconds"] = round(entry["seconds"] + float(elapsed), 2)
    return found


def measure_step(stack: Stack, ledgers: dict[str, Ledger], folder: Path, tail: int, seconds: float,
                 rounds: int, seed: int, log) -> dict:
    step: dict = {"drain": {}, "nightly": {}}
    for name, ledger in ledgers.items():
        run_sql(ledger.url, "TRUNCATE outbox")  # drained, as a running relay keeps it
        rate, before = relay_drain(stack, ledger, folder, tail, seed)
        step["drain"][name] = round(rate, 1)
        step["nightly"][name] = nightly(ledger, before, tail)
        log(f"  {name}: relay drained {tail:,} events at {rate:,.0f}/s; replay "
            f"{step['nightly'][name]['replay_events_per_s']:,.0f}/s, verify --since "
            f"{step['nightly'][name]['verify_since_events_per_s']:,.0f}/s")
    step["drain"]["ratio"] = ratio(step["drain"]["grown"], step["drain"]["small"])
    step["api"] = api_figures(ledgers, seconds, rounds)
    for case, figures in step["api"].items():
        log(f"  {case}: grown {figures['grown']['ops_per_s']:,.0f}/s p99 {figures['grown']['p99_ms']} ms, "
            f"small {figures['small']['ops_per_s']:,.0f}/s p99 {figures['small']['p99_ms']} ms "
            f"(rate {figures['rate_ratio']}, p99 {figures['p99_ratio']})")
    step["disk"] = disk(ledgers["grown"].url)
    log(f"  disk: {step['disk']['database_bytes'] / 1e9:.2f} GB, "
        f"{step['disk']['database_bytes_per_event']:,.0f} bytes per event")
    return step


def start_ledger(stack: Stack, name: str) -> Ledger:
    url = stack.database(f"ledger_{name}")
    fill(url, "BENCH-", BOOKINGS)
    fill(url, "BIG", 1, appends=10, per_append=100)  # BIG0: 1,000 events
    run_sql(url, "TRUNCATE outbox", "VACUUM ANALYZE")
    ensure_topic(stack.settings().kafka, f"scale-{name}")
    api, _ = stack.start_bench_api(url)
    env = stack.env(url, LEDGER_DYNAMODB_TABLE=f"scale_{name}")
    return Ledger(name, url, api, stack.api_key(url), env)


def run(steps: list[int], out: Path | None, tail: int, seconds: float, rounds: int, chunk: int, importers: int,
        log) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="booking-ledger-scale-"))
    folder.chmod(0o755)  # a private Postgres runs as the postgres user when we are root
    stack = Stack(folder / "stack")
    result: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                    "plan": {"steps": steps, "tail": tail, "seconds": seconds, "rounds": rounds, "chunk": chunk,
                             "importers": importers, "postgres": SCALE_SETTINGS},
                    "steps": {}}
    try:
        stack.start_postgres(**SCALE_SETTINGS)
        stack.start_pipeline_servers()
        ledgers = {name: start_ledger(stack, name) for name in ("small", "grown")}
        grown, seeds = 0, itertools.count(1000)  # each generated file's own bookings
        for ledger in ledgers.values():  # the first drain and replay (new topic, new table, cold JIT): not counted
            _, before = relay_drain(stack, ledger, folder, tail, next(seeds))
            nightly(ledger, before, tail)
        for target in [0, *steps]:
            log(f"step {target:,} events ...")
            growth = None
            if target > grown:
                logged = stack.postgres.log_file.stat().st_size
                growth = grow(ledgers["grown"].url, folder, target - grown, chunk, importers, seeds, log)
                grown = target
                with stack.postgres.log_file.open("rb") as f:
                    f.seek(logged)
                    growth["autovacuum"] = autovacuum(f.read().decode(errors="replace"), "ledger_grown")
            step = measure_step(stack, ledgers, folder, tail, seconds, rounds, next(seeds), log)
            step["growth"] = growth
            result["steps"][str(target)] = step
            if out:
                write(result, out)
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)  # the stack's data (15 GB at 20 M events) and the import files
    return result


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "latest.md").write_text("\n".join(markdown(result)) + "\n")


def markdown(result: dict) -> list[str]:
    plan = result["plan"]
    steps = result["steps"]
    lines = [
        "# The ledger at scale", "",
        f"Run of {result['when']}, `python -m bench.scale` (steps {', '.join(f'{s:,}' for s in plan['steps'])}; "
        f"{plan['rounds']} rounds of {plan['seconds']} s; outbox, replay and verify over {plan['tail']:,} new "
        f"events; Postgres {', '.join(f'{k} = {v}' for k, v in plan['postgres'].items())}). "
        "`grown` is the ledger filled by `import` up to the step, `small` the same base without it; each "
        "ratio is grown/small, median of the rounds' ratios (bench/scale.py says what each case does).", "",
        "| events imported | appends/s at 1 | at 32 | price as of p99 at 1 (ms) | booking read p99 at 1 (ms) | "
        "feed page at 8, pages/s | outbox drain, events/s | replay | verify --since | disk, bytes/event |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, step in steps.items():
        api = step["api"]
        nightly = step["nightly"]["grown"]
        lines.append(
            f"| {int(target):,} | {api['appends_1']['grown']['ops_per_s']:,.0f} ({api['appends_1']['rate_ratio']}×) | "
            f"{api['appends_32']['grown']['ops_per_s']:,.0f} ({api['appends_32']['rate_ratio']}×) | "
            f"{api['price_as_of_1']['grown']['p99_ms']} ({api['price_as_of_1']['p99_ratio']}×) | "
            f"{api['booking_1']['grown']['p99_ms']} ({api['booking_1']['p99_ratio']}×) | "
            f"{api['feed_page_500_at_8']['grown']['ops_per_s']:,.0f} ({api['feed_page_500_at_8']['rate_ratio']}×) | "
            f"{step['drain']['grown']:,.0f} ({step['drain']['ratio']}×) | {nightly['replay_events_per_s']:,.0f} | "
            f"{nightly['verify_since_events_per_s']:,.0f} | {step['disk']['database_bytes_per_event']:,.0f} |")
    last_key = list(steps)[-1] if steps else None
    if last_key:
        last = steps[last_key]
        lines += ["", "## Targets at the last step", "",
                  "| target | value | met |", "|---|---|---|"]
        for label, value, bound, higher in (
                ("appends at 1 in flight, grown/small ≥ 0.9", last["api"]["appends_1"]["rate_ratio"], 0.9, True),
                ("appends at 32 in flight, grown/small ≥ 0.9", last["api"]["appends_32"]["rate_ratio"], 0.9, True),
                ("price as of p99, grown/small ≤ 1.2", last["api"]["price_as_of_1"]["p99_ratio"], 1.2, False)):
            met = value is not None and (value >= bound if higher else value <= bound)
            lines.append(f"| {label} | {value} | {'yes' if met else 'no'} |")
        lines += ["", f"## Disk at {int(last_key):,} events", "",
                  "| relation | of | bytes | bytes/event |", "|---|---|---|---|"]
        for relation, figures in sorted(last["disk"]["relations"].items(), key=lambda kv: -kv[1]["bytes"]):
            lines.append(f"| {relation} | {figures['table']} | {figures['bytes']:,} | {figures['bytes_per_event']} |")
        lines.append(f"| the whole database | | {last['disk']['database_bytes']:,} | "
                     f"{last['disk']['database_bytes_per_event']} |")
    lines += ["", "## The growth", "",
              "| step | events imported | import events/s | autovacuum runs (seconds) |", "|---|---|---|---|"]
    for target, step in steps.items():
        growth = step.get("growth")
        if growth:
            vacuum = ", ".join(f"{k} {v['runs']} ({v['seconds']} s)" for k, v in sorted(growth["autovacuum"].items()))
            lines.append(f"| {int(target):,} | {growth['events']:,} | {growth['events_per_s']:,.0f} | "
                         f"{vacuum or 'none'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--tail", type=int, default=50_000, help="new events the relay, replay and verify handle")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1_000_000, help="events per import file")
    parser.add_argument("--importers", type=int, default=2, help="import processes at a time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    result = run(sorted(args.steps), args.out, args.tail, args.seconds, args.rounds, args.chunk, args.importers, log)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}))


if __name__ == "__main__":
    main()
