"""Failover figures over many kills of the leader (not part of `make test`):

    .venv/bin/python -m tests.ha.measure --runs 10

One cluster (devstack.ha) and two APIs on it: one with the default retry budget
(LEDGER_WRITE_RETRY_SECONDS=20), one with none (0), each with its own writers (tests.ha.load.Load:
creates, collisions, appends, idempotent resends; a 5xx is never retried). Each run kills the
leader's Patroni and Postgres (kill -9), waits for the writers to be served again, starts the
node (it rejoins as a replica) and waits for two streaming replicas before the next run.

Per run it records, from the kill: when a surviving Patroni first answers 200 on /primary (its
leader key taken and promoted), when that node first accepts a read-write session, and when each
API's writers got their first 2xx for a request sent after the kill. The first two split the
client-visible unavailability into Patroni's part (the leader key's TTL) and ours (retry backoff,
connect_primary). At the end every acknowledged event is looked up in the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg

from devstack.ha import HACluster, PatroniNode
from devstack.processes import wait_until
from tests import scratch
from tests.e2e.conftest import cli, make_key, start_server
from tests.ha.load import Load


@dataclass
class Run:
    killed: str
    new_leader: str = ""
    patroni_primary: float = 0.0  # kill -> a surviving node's /primary answers 200
    read_write: float = 0.0  # kill -> that node accepts a read-write session
    first_2xx: float = 0.0  # kill -> first 2xx to a request sent after the kill (budget 20 s)
    slowest: float = 0.0  # the longest request from the kill on (budget 20 s)
    server_errors: int = 0  # 5xx or no answer, budget 20 s (must be 0)
    no_budget_first_2xx: float = 0.0
    no_budget_errors: dict[str, int] = field(default_factory=dict)  # "status problem" -> count, budget 0
    no_budget_error_span: float = 0.0  # first to last 5xx answer, budget 0


class Watch(threading.Thread):
    """Polls the surviving nodes from the kill on: Patroni's /primary and a read-write session."""

    def __init__(self, nodes: list[PatroniNode], cluster: HACluster, since: float) -> None:
        super().__init__(daemon=True)
        self.nodes, self.cluster, self.since = nodes, cluster, since
        self.primary_at: float | None = None
        self.read_write_at: float | None = None
        self.leader = ""

    def run(self) -> None:
        deadline = self.since + 60
        while time.monotonic() < deadline and (self.primary_at is None or self.read_write_at is None):
            for node in self.nodes:
                if self.primary_at is None and node.rest_get("/primary", timeout=0.5)[0] == 200:
                    self.primary_at, self.leader = time.monotonic(), node.name
                if self.read_write_at is None and asyncio.run(_read_write(self.cluster.node_url(node))):
                    self.read_write_at = time.monotonic()
            time.sleep(0.05)


async def _read_write(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=0.5)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return not await conn.fetchval("SELECT pg_is_in_recovery()", timeout=0.5)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        conn.terminate()


def one_run(cluster: HACluster, api_url: str, no_budget_url: str, keys: dict[str, str],
            writers: int) -> tuple[Run, Load, Load]:
    leader = cluster.wait_ready()
    cluster.wait_replicas(2, timeout=90)
    load = Load(api_url, keys, writers=writers, read_feed=False)
    bare = Load(no_budget_url, keys, writers=max(2, writers // 3), read_feed=False)
    load.start()
    bare.start()
    try:
        time.sleep(4)
        leader.kill()
        killed_at = time.monotonic()
        print(f"killed {leader.name} at {time.strftime('%H:%M:%S')}", flush=True)
        watch = Watch([n for n in cluster.nodes if n is not leader], cluster, killed_at)
        watch.start()
        wait_until(lambda: load.unavailable_for(killed_at) < float("inf")
                   and bare.unavailable_for(killed_at) < float("inf"), timeout=60, what="2xx after the kill")
        watch.join(timeout=60)
        time.sleep(2)
    finally:
        load.stop()
        bare.stop()
    errors = [o for o in bare.outcomes if o.status >= 500 or o.status == 0]
    run = Run(
        killed=leader.name, new_leader=watch.leader,
        patroni_primary=(watch.primary_at or float("nan")) - killed_at,
        read_write=(watch.read_write_at or float("nan")) - killed_at,
        first_2xx=load.unavailable_for(killed_at), slowest=load.slowest(killed_at),
        server_errors=len(load.server_errors()),
        no_budget_first_2xx=bare.unavailable_for(killed_at),
        no_budget_errors=dict(collections.Counter(f"{o.status} {o.problem}".strip() for o in errors)),
        no_budget_error_span=(max(o.done for o in errors) - min(o.done for o in errors)) if errors else 0.0,
    )
    leader.start()  # it rejoins as a replica (pg_rewind where needed)
    return run, load, bare


def summary(runs: list[Run], lost: int, acknowledged: int) -> dict[str, object]:
    def p50_max(values: list[float]) -> str:
        return f"p50 {statistics.median(values):.1f} s, max {max(values):.1f} s"

    no_budget: collections.Counter[str] = collections.Counter()
    for run in runs:
        no_budget.update(run.no_budget_errors)
    return {
        "failovers": len(runs),
        "unavailable (kill -> first 2xx), budget 20 s": p50_max([r.first_2xx for r in runs]),
        "kill -> Patroni /primary 200": p50_max([r.patroni_primary for r in runs]),
        "kill -> read-write session": p50_max([r.read_write for r in runs]),
        "read-write -> first 2xx": p50_max([r.first_2xx - r.read_write for r in runs]),
        "slowest request, budget 20 s": p50_max([r.slowest for r in runs]),
        "5xx within the budget": sum(r.server_errors for r in runs),
        "acknowledged events": acknowledged,
        "acknowledged events lost": lost,
        "budget 0: unavailable (kill -> first 2xx)": p50_max([r.no_budget_first_2xx for r in runs]),
        "budget 0: error answers": dict(no_budget),
        "budget 0: first to last error": p50_max([r.no_budget_error_span for r in runs]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--writers", type=int, default=9, help="writers on the API with the budget")
    parser.add_argument("--json", type=Path, help="also write the runs and the summary here")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's folder (the nodes' logs)")
    args = parser.parse_args()
    root = scratch.folder("ledger-ha-measure-")
    cluster = HACluster.on_free_ports(root / "cluster")
    cluster.start()
    apis = []
    runs: list[Run] = []
    loads: list[Load] = []
    try:
        cli(cluster.url, "migrate")
        keys = {dept: make_key(cluster.url, dept, "read,write") for dept in ("hotel", "car", "flight")}
        apis.append(start_server(cluster.url, workers=2, LEDGER_RATE_LIMIT="0"))
        apis.append(start_server(cluster.url, workers=1, LEDGER_RATE_LIMIT="0", LEDGER_WRITE_RETRY_SECONDS="0"))
        for index in range(args.runs):
            run, load, bare = one_run(cluster, apis[0].url, apis[1].url, keys, args.writers)
            runs.append(run)
            loads += [load, bare]
            print(f"run {index + 1}: {json.dumps(asdict(run))}", flush=True)
        cluster.wait_ready()
        cluster.wait_replicas(2, timeout=90)
        lost = sum(len(load.lost(cluster.url)) for load in loads)
        violations = 0
        for load in loads:  # the other invariants too: content, one owner per code, gapless versions
            try:
                load.check_ledger(cluster.url)
            except AssertionError as error:
                violations += 1
                print(f"VIOLATION: {error}", flush=True)
        result = summary(runs, lost, sum(len(load.acks) for load in loads))
        print(json.dumps(result, indent=2), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "summary": result}, indent=2))
        return 1 if lost or violations or result["5xx within the budget"] else 0
    finally:
        for api in apis:
            api.stop()
        cluster.stop()
        if args.keep:
            print(f"logs kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
