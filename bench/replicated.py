"""What synchronous replication costs an append: the same load on one Postgres and on the
replicated cluster (`make run-ha`'s: etcd and three Patroni nodes, strict synchronous mode),
side by side in one run.

For each number of requests in flight the runs alternate single, replicated, single, ... for the
API (group commit) and for the raw per-transaction client (`bench.drivers raw`), so the ratio
replicated/single of each is the median of adjacent pairs. On this machine the standbys share the
two cores with the primary, the API and the load generator: their WAL replay is CPU taken from
the primary, which a real deployment (standbys on their own hosts) does not pay, while the round
trip to a standby is a loopback hop, cheaper than a network's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench import load
from bench.fill import fill
from bench.stack import Stack, fetch_value
from devstack.ha import HACluster
from migrations.runner import upgrade

TOPOLOGIES = ("single", "replicated")
SYSTEMS = ("api", "raw")


def measure(stack: Stack, concurrency: tuple[int, ...], seconds: float, rounds: int, bookings: int,
            log: Callable[[str], None], summarize: Callable[[list[load.Sample]], dict]) -> dict:
    single = stack.database("ledger_replication_baseline")
    fill(single, "BENCH-", bookings)
    cluster = HACluster.on_free_ports(stack.folder / "replicated")
    started = []
    cluster.start()
    try:
        upgrade(cluster.url)
        fill(cluster.url, "BENCH-", bookings)
        leader = cluster.primary()
        assert leader is not None, "the cluster has no leader"
        standbys = fetch_value(cluster.node_url(leader), "SHOW synchronous_standby_names")
        keys, apis = {}, {}
        for topology, url in (("single", single), ("replicated", cluster.url)):
            keys[topology] = stack.api_key(url)
            api, apis[topology] = stack.start_bench_api(url)
            started.append(api)
        # The raw client connects to the leader itself: it has no use for the multi-host URL.
        raw = {"single": single, "replicated": cluster.node_url(leader)}

        def run(system: str, topology: str, c: int, duration: float) -> load.Sample:
            if system == "api":
                return load.api_appends(apis[topology], keys[topology], c, duration, bookings)
            return load.driver("raw", raw[topology], c, duration, bookings)

        for system in SYSTEMS:  # warm-up: pools, caches
            for topology in TOPOLOGIES:
                run(system, topology, 8, min(2, seconds))
        samples: dict[str, dict[str, dict[int, list[load.Sample]]]] = {
            system: {topology: {c: [] for c in concurrency} for topology in TOPOLOGIES} for system in SYSTEMS}
        for c in concurrency:
            for _ in range(rounds):
                for system in SYSTEMS:
                    for topology in TOPOLOGIES:
                        samples[system][topology][c].append(run(system, topology, c, seconds))
                    log(f"  {c:>3} in flight: {system} single {samples[system]['single'][c][-1].rate:7.0f}/s  "
                        f"replicated {samples[system]['replicated'][c][-1].rate:7.0f}/s")
        result: dict = {"synchronous_standby_names": standbys, "throughput": {}, "replicated_vs_single": {}}
        for system in SYSTEMS:
            result["throughput"][system] = {
                topology: {str(c): summarize(samples[system][topology][c]) for c in concurrency}
                for topology in TOPOLOGIES}
            result["replicated_vs_single"][system] = {
                str(c): round(statistics.median([r.rate / s.rate for s, r in zip(samples[system]["single"][c],
                                                                        samples[system]["replicated"][c],
                                                                        strict=True) if s.rate]), 3)
                for c in concurrency}
        return result
    finally:
        for api in started:
            api.stop()
        cluster.stop()
