"""One lever at a time: API variants side by side, each next to the raw baseline.

    python -m bench.experiment --variant before:tree=/path/to/checkout --variant after \\
        --variant three-workers:LEDGER_HTTP_WORKERS=3 --concurrency 1 32 128 --rounds 3

With --feed, the variants read 500-event feed pages and the baseline passes the same page through
as JSON built by Postgres.

A variant is a name and, optionally, `tree=DIR` (run the API from another checkout of the code,
e.g. a git worktree of an earlier commit), `schema=DIR` (the variant's own database, migrated by
that checkout's migrations and filled alike: e.g. an earlier append function) and environment
settings. Every variant's API runs on the same Postgres, on one ledger unless it has its own
schema; the raw baseline runs on this checkout's schema. The runs alternate (variant 1, raw,
variant 2, raw, ...) round by round, each round starting with the next variant. Prints, per
variant and level, appends/s, its ratio to the raw run right after it, CPU per append (Postgres
and the API's processes, from /proc) and the mean group-commit batch (from /metrics).

`--personal every` puts a made-up traveller under `data.personal` in every append (bench/load.lua),
`--personal creates` in those that create a booking (one in four). With a
variant `before:tree=DIR,schema=DIR` on an export of the code before the audit migrations
(`git archive`; bench/README.md, issue 29), it measures what the hash chain and the sealing of
personal data cost the append path over HTTP.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import load
from bench.cpu import postgres_seconds, process_seconds
from bench.fill import fill
from bench.run import BOOKINGS, FEED_JSON
from bench.stack import Stack
from devstack.harness import LedgerProcess

FEED_PATH = "/v1/events?after=0&limit=500"


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    env: dict[str, str] = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        env["PYTHONPATH" if key == "tree" else key] = value
    return name, env


def migrate_from(checkout: str, url: str) -> None:
    """Migrate the database at `url` with the migrations of another checkout of the code."""
    subprocess.run([sys.executable, "-c", "import sys; from migrations.runner import upgrade; upgrade(sys.argv[1])",
                    url], cwd=checkout, env={**os.environ, "PYTHONPATH": checkout}, check=True)


def batch_counts(api_url: str) -> tuple[float, float]:
    """(appends, calls) of the API's group commit so far, from /metrics (all workers)."""
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    found = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in found:
            if line.startswith(f"ledger_append_batch_size_{kind} "):
                found[kind] = float(line.split()[1])
    return found["sum"], found["count"]


@dataclass
class Runs:
    """One system's runs at one level: appends/s, ratio to raw, CPU ms per append, mean batch."""

    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    pg_ms: list[float] = field(default_factory=list)
    own_ms: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0  # answers other than 2xx, over all runs

    def summary(self) -> dict[str, float]:
        """The medians, rounded (for a results file)."""
        return {"appends_per_s": round(med(self.rates), 1), "api_vs_raw": round(med(self.ratios), 3),
                "p50_ms": round(med(self.p50), 1), "p99_ms": round(med(self.p99), 1),
                "postgres_cpu_ms_per_append": round(med(self.pg_ms), 3),
                "api_cpu_ms_per_append": round(med(self.own_ms), 3), "mean_batch": round(med(self.batch), 1),
                "rounds": len(self.rates), "errors": self.errors}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


Apis = dict[str, tuple[LedgerProcess, str, str]]  # variant -> (its API, its URL, an API key)


def start_variants(stack: Stack, url: str, variants: list[tuple[str, dict[str, str]]],
                   prefix: str = "ledger_experiment", personal: str = "none") -> Apis:
    """Each variant's API on the ledger at `url`, or on a database of its own (`schema`), warmed up."""
    apis: Apis = {}
    key = stack.api_key(url)
    for n, (name, env) in enumerate(variants):
        env = dict(env)
        workers = int(env.pop("LEDGER_HTTP_WORKERS", "2"))
        own_url, own_key = url, key
        if checkout := env.pop("schema", None):
            own_url = stack.database(f"{prefix}_{n}", migrate=False)
            migrate_from(checkout, own_url)
            fill(own_url, "BENCH-", BOOKINGS)
            own_key = stack.api_key(own_url)
        api, api_url = stack.start_bench_api(own_url, workers=workers, ready_path="/health/live", **env)
        load.api_appends(api_url, own_key, 8, 2, BOOKINGS, personal=personal)
        apis[name] = (api, api_url, own_key)
    load.driver("raw", url, 8, 2, BOOKINGS)
    return apis


def alternate(stack: Stack, url: str, apis: Apis, concurrency: list[int], rounds: int, seconds: float,
              feed: bool = False, personal: str = "none", echo: Callable[[str], None] = print,
              ) -> dict[tuple[str, int], Runs]:
    """The variants' runs, each next to the raw baseline on `url`'s schema (appends, or with `feed` the
    500-event pages), round by round: (variant or "raw", level) -> its runs."""
    data_dir = stack.postgres.data_dir
    runs: dict[tuple[str, int], Runs] = {}
    for c in concurrency:
        for n in range(rounds):
            # Each round starts with the next variant, so that whatever recurs once a round (an
            # autovacuum, another tenant's job) does not always fall on the same one.
            order = [*apis.items()][n % len(apis):] + [*apis.items()][:n % len(apis)]
            for name, (api, api_url, api_key) in order:
                mine, raw_runs = runs.setdefault((name, c), Runs()), runs.setdefault(("raw", c), Runs())
                pg0, own0, (sum0, count0) = postgres_seconds(data_dir), process_seconds(api.pids()), \
                    batch_counts(api_url)
                if feed:
                    sample = load.api_reads(api_url, api_key, FEED_PATH, c, seconds)
                else:
                    sample = load.api_appends(api_url, api_key, c, seconds, BOOKINGS, personal=personal)
                pg1, own1, (sum1, count1) = postgres_seconds(data_dir), process_seconds(api.pids()), \
                    batch_counts(api_url)
                raw = (load.json_reads(url, FEED_JSON, [0, 500], c, seconds) if feed
                       else load.driver("raw", url, c, seconds, BOOKINGS))
                pg2 = postgres_seconds(data_dir)
                mine.rates.append(sample.rate)
                mine.ratios.append(sample.rate / raw.rate)
                mine.pg_ms.append((pg1 - pg0) * 1000 / max(1, sample.requests))
                mine.own_ms.append((own1 - own0) * 1000 / max(1, sample.requests))
                mine.p50.append(sample.p50_ms)
                mine.p99.append(sample.p99_ms)
                mine.errors += sample.errors
                if count1 > count0:
                    mine.batch.append((sum1 - sum0) / (count1 - count0))
                raw_runs.rates.append(raw.rate)
                raw_runs.pg_ms.append((pg2 - pg1) * 1000 / max(1, raw.requests))
                echo(f"c={c:<3} round {n + 1} {name:>16}: {sample.rate:7.0f}/s (p50 {sample.p50_ms:.1f} ms, "
                     f"p99 {sample.p99_ms:.1f} ms, {sample.errors} errors, pg {mine.pg_ms[-1]:.2f} ms, "
                     f"api {mine.own_ms[-1]:.2f} ms, batch {mine.batch[-1] if mine.batch else 0:.1f})  "
                     f"raw {raw.rate:7.0f}/s (pg {raw_runs.pg_ms[-1]:.2f} ms)  ratio {mine.ratios[-1]:.2f}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--feed", action="store_true",
                        help="read 500-event feed pages instead of appending; the baseline is the same "
                             "page as JSON built by Postgres and passed through (bench.run FEED_JSON)")
    parser.add_argument("--personal", choices=load.PERSONAL, default="none",
                        help="which appends carry data.personal: none, every one, or those that create a booking")
    args = parser.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="booking-ledger-experiment-")))
    try:
        stack.start_postgres()
        url = stack.database("ledger_experiment")
        fill(url, "BENCH-", BOOKINGS)
        if args.feed:
            load.driver("raw", url, 8, 5, BOOKINGS)  # events for the pages, from position 0 on
        apis = start_variants(stack, url, args.variant, personal=args.personal)
        runs = alternate(stack, url, apis, args.concurrency, args.rounds, args.seconds, feed=args.feed,
                         personal=args.personal, echo=lambda line: print(line, flush=True))
        first = next(iter(apis))
        print(f"\n{'variant':>16} {'c':>4}  appends/s  api_vs_raw  vs {first:<8} p50/p99 ms   "
              "pg ms/append  api ms/append  mean batch")
        for c in args.concurrency:
            for name in [*apis, "raw"]:
                r = runs[(name, c)]
                vs = (f"{med(r.ratios) / med(runs[(first, c)].ratios):6.2f}" if r.ratios else "     -")
                print(f"{name:>16} {c:>4}  {med(r.rates):9.0f}  {med(r.ratios):10.2f}  {vs:<11} "
                      f"{med(r.p50):5.1f}/{med(r.p99):6.1f}  {med(r.pg_ms):12.2f}  {med(r.own_ms):13.2f}  "
                      f"{med(r.batch):10.1f}")
    finally:
        stack.stop()
    stack.remove()  # only after a run that ended well: a failed one keeps its logs


if __name__ == "__main__":
    main()
