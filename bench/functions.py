"""Where an append spends Postgres' time, by function of the append path: Postgres' own counters.

    python -m bench.functions                       # this checkout, 32 in flight, no personal data
    python -m bench.functions --against 0d705c6 --personal every --rounds 3

Starts a private Postgres with `track_functions = 'all'` and this checkout's API (and, with
`--against COMMIT`, that commit's API on a database its own migrations made, filled alike: bench.
audit_cost's way), then loads each with appends over HTTP in turn (bench/load.lua, one in four
creating a booking) and reads `pg_stat_user_functions`. Prints per function the calls and the
microseconds per append spent in it: its own ("self") and with the functions it calls ("total"),
medians of the rounds. The time is the backend's wall time inside the function: CPU, and any wait
there (ledger_acquire_locks waits for the batches ahead of it on a booking's lock). Parsing, the
commit and the WAL flush are outside every function.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench import experiment, load
from bench.audit_cost import export
from bench.fill import fill
from bench.stack import Stack, fetch_value, run_sql
from devstack.processes import wait_until

COUNTERS_SQL = "SELECT coalesce(json_object_agg(funcname, json_build_array(calls, self_time, total_time)), '{}') " \
               "FROM pg_stat_user_functions"


def counters(url: str, batches: float, timeout: float = 30) -> dict[str, list[float]]:
    """The database's function counters once they count `batches` calls of ledger_append_batch: a
    backend sends its counters at most once a second, and an idle one only after a while."""
    def counted() -> dict[str, list[float]] | None:
        by_name: dict[str, list[float]] = json.loads(str(fetch_value(url, COUNTERS_SQL)))
        return by_name if by_name.get("ledger_append_batch", [0])[0] >= batches else None

    return wait_until(counted, timeout, 0.5, f"Postgres' counters of {batches} batches")


def measure(url: str, api_url: str, key: str, concurrency: int, seconds: float, personal: str) -> dict[str, tuple]:
    """One run: function -> (calls, self µs, total µs), each per append."""
    run_sql(url, "SELECT pg_stat_reset()")
    appends0, batches0 = experiment.batch_counts(api_url)
    sample = load.api_appends(api_url, key, concurrency, seconds, experiment.BOOKINGS, personal=personal)
    if sample.errors:
        raise RuntimeError(f"{sample.errors} appends answered other than 2xx")
    appends1, batches1 = experiment.batch_counts(api_url)
    appends = appends1 - appends0
    return {name: (calls / appends, self_ms * 1000 / appends, total_ms * 1000 / appends)
            for name, (calls, self_ms, total_ms) in counters(url, batches1 - batches0).items() if calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a commit whose append path to measure beside this checkout's")
    parser.add_argument("--personal", choices=load.PERSONAL, default="none")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="booking-ledger-functions-")))
    try:
        stack.start_postgres(track_functions="'all'")
        variants: dict[str, tuple[str, dict[str, str]]] = {"head": (stack.database("ledger_functions"), {})}
        fill(variants["head"][0], "BENCH-", experiment.BOOKINGS)
        if args.against:
            code = str(export(args.against, stack.folder / "code"))
            url = stack.database("ledger_functions_against", migrate=False)
            experiment.migrate_from(code, url)
            fill(url, "BENCH-", experiment.BOOKINGS)
            variants[args.against] = (url, {"PYTHONPATH": code})
        apis = {}
        for name, (url, env) in variants.items():
            key = stack.api_key(url)
            api, api_url = stack.start_bench_api(url, ready_path="/health/live", **env)
            load.api_appends(api_url, key, 8, 2, experiment.BOOKINGS, personal=args.personal)  # warm-up
            apis[name] = (url, api_url, key)
        runs: dict[str, list[dict[str, tuple]]] = {name: [] for name in apis}
        for n in range(args.rounds):
            for name in [*apis][n % len(apis):] + [*apis][:n % len(apis)]:
                runs[name].append(measure(*apis[name], args.concurrency, args.seconds, args.personal))
        print(f"µs of Postgres time per append, {args.concurrency} in flight, data.personal in {args.personal} "
              f"appends, medians of {args.rounds} rounds")
        names = sorted({function for rounds in runs.values() for run in rounds for function in run},
                       key=lambda f: -statistics.median(run.get(f, (0, 0, 0))[1] for run in runs["head"]))
        print(f"{'function':30}" + "".join(f" {name + ': calls':>18} {'self':>7} {'total':>7}" for name in runs))
        for function in names:
            cells = []
            for rounds in runs.values():
                calls, own, total = (statistics.median(run.get(function, (0, 0, 0))[i] for run in rounds)
                                     for i in range(3))
                cells.append(f" {calls:18.2f} {own:7.1f} {total:7.1f}")
            print(f"{function:30}" + "".join(cells))
    finally:
        stack.stop()
    stack.remove()  # only after a run that ended well: a failed one keeps its logs


if __name__ == "__main__":
    main()
