"""One lever at a time: API variants side by side, each next to the raw baseline.

    python -m bench.experiment --variant before:tree=/path/to/checkout --variant after \\
        --variant three-workers:LEDGER_HTTP_WORKERS=3 --concurrency 32 --rounds 3

A variant is a name and, optionally, `tree=DIR` (run the API from another checkout of the code,
e.g. a git worktree of an earlier commit) and environment settings. Every variant's API runs on
the same Postgres and ledger; the runs alternate (variant 1, raw, variant 2, raw, ...) round by
round. Prints, per variant, appends/s and its ratio to the raw run right after it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import load
from bench.fill import fill
from bench.run import BOOKINGS
from bench.stack import Stack


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, spec = text.partition(":")
    env: dict[str, str] = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        env["PYTHONPATH" if key == "tree" else key] = value
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="booking-ledger-experiment-")))
    try:
        stack.start_postgres()
        url = stack.database("ledger_experiment")
        fill(url, "BENCH-", BOOKINGS)
        key = stack.api_key(url)
        apis = {}
        for name, env in args.variant:
            env = dict(env)
            workers = int(env.pop("LEDGER_HTTP_WORKERS", "2"))
            _, api_url = stack.start_bench_api(url, workers=workers, ready_path="/health/live", **env)
            load.api_appends(api_url, key, 8, 2, BOOKINGS)
            apis[name] = api_url
        load.driver("raw", url, 8, 2, BOOKINGS)
        rates: dict[str, list[float]] = {name: [] for name in apis}
        ratios: dict[str, list[float]] = {name: [] for name in apis}
        for n in range(args.rounds):
            for name, api_url in apis.items():
                api = load.api_appends(api_url, key, args.concurrency, args.seconds, BOOKINGS)
                raw = load.driver("raw", url, args.concurrency, args.seconds, BOOKINGS)
                rates[name].append(api.rate)
                ratios[name].append(api.rate / raw.rate)
                print(f"round {n + 1} {name:>16}: {api.rate:7.0f}/s (p50 {api.p50_ms:.1f} ms, "
                      f"p99 {api.p99_ms:.1f} ms, {api.errors} errors)  raw {raw.rate:7.0f}/s  "
                      f"ratio {ratios[name][-1]:.2f}", flush=True)
        first = next(iter(apis))
        print(f"\n{'variant':>16}  appends/s  api_vs_raw  vs {first}")
        for name in apis:
            print(f"{name:>16}  {statistics.median(rates[name]):9.0f}  {statistics.median(ratios[name]):10.2f}  "
                  f"{statistics.median(ratios[name]) / statistics.median(ratios[first]):6.2f}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
