"""latest.json, latest.md (a table to read in ten seconds) and the plots, from one bench run."""

from __future__ import annotations

import json
from pathlib import Path

from bench import importing, streaming

# (name, where in the results, comparison, bound): the targets of the benchmark issue.
TARGETS = [
    # Fast for one caller too (issue 25): `minimal` is the three-statement transaction (bench.drivers).
    ("API append p50 (ms) at 1 in flight", ("throughput", "api", "1", "p50_ms"), "<=", 1.0),
    ("api_vs_message_db at 1 in flight", ("ratios", "api_vs_message_db", "1"), ">=", 0.5),
    ("api_vs_minimal at 1 in flight", ("ratios", "api_vs_minimal", "1"), ">=", 1.0),
    ("api_vs_minimal at 8 in flight", ("ratios", "api_vs_minimal", "8"), ">=", 1.0),
    ("api_vs_message_db at 8 in flight", ("ratios", "api_vs_message_db", "8"), ">=", 1.0),
    ("api_vs_minimal at 32 in flight", ("ratios", "api_vs_minimal", "32"), ">=", 1.0),
    ("api_vs_minimal at 128 in flight", ("ratios", "api_vs_minimal", "128"), ">=", 1.3),
    ("1,000-event booking read vs Postgres-built JSON, 8 in flight",
     ("growth", "reads", "grown", "booking_1000_events", "api_vs_postgres_json"), ">=", 0.8),
    ("500-event feed page vs Postgres-built JSON, 8 in flight",
     ("growth", "reads", "grown", "feed_page_500", "api_vs_postgres_json"), ">=", 0.8),
    ("GET booking p99 (ms) at 1 in flight", ("growth", "price_as_of", "booking_1_in_flight", "p99_ms"), "<=", 2),
    ("price as of p99 (ms) at 1 in flight", ("growth", "price_as_of", "at_recorded_1_in_flight", "p99_ms"),
     "<=", 2),
    ("api_vs_raw at 32 in flight", ("ratios", "api_vs_raw", "32"), ">=", 1.0),
    ("api_vs_raw at 128 in flight", ("ratios", "api_vs_raw", "128"), ">=", 1.3),
    ("api_vs_message_db at 32 in flight", ("ratios", "api_vs_message_db", "32"), ">=", 1.0),
    ("api_vs_eventsourcing at 32 in flight", ("ratios", "api_vs_eventsourcing", "32"), ">=", 4.0),
    ("relay events/s vs the API's peak appends/s", ("derived", "relay_vs_api_peak"), ">=", 1.0),
    ("relay commit-to-ack p99 (ms) at the top steady rate", ("derived", "relay_p99_ms_at_top_rate"), "<=", 100),
    ("sink_vs_raw (boto3)", ("sink", "sink_vs_raw"), ">=", 0.8),
    ("growth_ratio", ("growth", "growth_ratio"), ">=", 0.9),
    ("API worker peak RSS (MB)", ("derived", "api_worker_peak_rss_mb"), "<=", 150),
    ("relay peak RSS (MB)", ("memory", "relay_peak_rss_mb"), "<=", 100),
    ("sink peak RSS (MB)", ("memory", "sink_peak_rss_mb"), "<=", 100),
    ("price as of p99 (ms), 100,000-event booking, 8 in flight", ("growth", "price_as_of", "at_recorded", "p99_ms"),
     "<=", 5),
    ("import events/s (200,000-event file)", ("importing", "events_per_s"), ">=", 10_000),
    ("stream commit-to-client p50 (ms), 50 streams, 200 appends/s", ("streaming", "p50_ms"), "<=", 20),
    # The hash chain and sealed personal data (issue 29): at most 10 % off the appends at 32 in flight.
    ("appends/s, data.personal in every append, head vs the code before the audit (0015), 32 in flight",
     ("audit", "every", "head_vs_0015"), ">=", 0.9),
    ("the same by the ratio to the raw loop", ("audit", "every", "head_vs_0015_by_raw"), ">=", 0.9),
    ("appends/s, data.personal in the creating appends only, head vs 0015, 32 in flight",
     ("audit", "creates", "head_vs_0015"), ">=", 0.9),
    ("the same by the ratio to the raw loop", ("audit", "creates", "head_vs_0015_by_raw"), ">=", 0.9),
]


def _get(results: dict, path: tuple[str, ...]):
    value = results
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def derive(results: dict) -> dict:
    derived = {}
    api = _get(results, ("throughput", "api")) or {}
    relay = _get(results, ("relay", "relay_events_per_s"))
    if api and relay:
        derived["api_peak_appends_per_s"] = max(v["ops_per_s"] for v in api.values())
        derived["relay_vs_api_peak"] = round(relay / derived["api_peak_appends_per_s"], 2)
    at_rate = _get(results, ("relay", "commit_to_ack_at_rate")) or {}
    if at_rate:
        derived["relay_p99_ms_at_top_rate"] = at_rate[max(at_rate, key=int)].get("p99_ms")
    rss = _get(results, ("memory", "api_worker_peak_rss_mb"))
    if rss:
        derived["api_worker_peak_rss_mb"] = max(rss)
    return derived


def targets(results: dict) -> list[dict]:
    rows = []
    for name, path, comparison, bound in TARGETS:
        value = _get(results, path)
        met = None if value is None else (value >= bound if comparison == ">=" else value <= bound)
        rows.append({"target": name, "value": value, "bound": f"{comparison} {bound}", "met": met})
    return rows


def write(results: dict, out: Path) -> None:
    results["derived"] = derive(results)
    results["targets"] = targets(results)
    (out / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "latest.md").write_text(markdown(results))
    plot(results, out)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _vs_json(read: dict) -> str:
    json = read.get("postgres_json")
    if not json:
        return ""
    return (f"; Postgres-built JSON passed through {json['ops_per_s']:,.0f}/s, "
            f"ratio {read['api_vs_postgres_json']:.2f}")


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    lines = [
        f"# booking-ledger bench — {meta.get('when', '?')} ({meta.get('mode', '?')}, {meta.get('seconds', '?')} s, "
        f"{meta.get('machine', {}).get('cpus', '?')} CPUs)",
        "",
        *([f"Load average (1 min) during the run: median {meta['load_average']['median']}, "
           f"max {meta['load_average']['max']}.", ""] if "load_average" in meta else []),
        "Everything ran on this one machine: Postgres, the API, the load generator and the peers. "
        "Ratios compare runs made next to each other in this invocation (A B A B).",
        "",
        "## Targets",
        "",
        "| target | value | bound | met |",
        "|---|---|---|---|",
    ]
    for row in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {_fmt(row['value'])} | {row['bound']} | {met} |")
    throughput = results.get("throughput", {})
    if throughput:
        levels = list(next(iter(throughput.values())))
        lines += ["", "## Appends: operations/s (p50 / p99 ms) by requests in flight", "",
                  "| system | " + " | ".join(levels) + " |", "|---" * (len(levels) + 1) + "|"]
        for system, by_c in throughput.items():
            cells = [f"{v['ops_per_s']:,.0f} ({v['p50_ms']:.1f} / {v['p99_ms']:.1f})" for v in by_c.values()]
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        for ratio, by_c in results.get("ratios", {}).items():
            lines.append(f"| *{ratio}* | " + " | ".join(f"{v:.2f}" for v in by_c.values()) + " |")
    growth = results.get("growth")
    if growth:
        a = growth["appends_at_32"]
        lines += ["", "## Growth", "",
                  f"- appends at 32 in flight: empty ledger {a['empty']['ops_per_s']:,.0f}/s, with "
                  f"{growth['events_in_grown_ledger']:,} events {a['grown']['ops_per_s']:,.0f}/s "
                  f"→ growth_ratio **{growth['growth_ratio']:.2f}**"]
        for name, reads in growth["reads"].items():
            booking, page = reads["booking_1000_events"], reads["feed_page_500"]
            lines.append(f"- reads on the {name} ledger (8 in flight): a 1,000-event booking "
                         f"{booking['ops_per_s']:,.0f}/s (p99 {booking['p99_ms']:.1f} ms{_vs_json(booking)}), "
                         f"a 500-event feed page {page['ops_per_s']:,.0f}/s "
                         f"(p99 {page['p99_ms']:.1f} ms{_vs_json(page)})")
        as_of = growth.get("price_as_of")
        if as_of:
            lines.append(f"- price as of a moment on a booking with {as_of['events_of_the_booking']:,} events "
                         f"(8 in flight): " + ", ".join(
                             f"{name} {as_of[name]['ops_per_s']:,.0f}/s (p50 {as_of[name]['p50_ms']:.1f} ms, "
                             f"p99 {as_of[name]['p99_ms']:.1f} ms)"
                             for name in ("at_recorded", "at_occurred", "at_version")))
            for name, what in (("at_recorded_1_in_flight", "the same (at, recorded)"),
                               ("booking_1_in_flight", "GET of a booking")):
                one = as_of.get(name)
                if one:
                    lines.append(f"- {what} at 1 in flight: {one['ops_per_s']:,.0f}/s "
                                 f"(p50 {one['p50_ms']:.2f} ms, p99 {one['p99_ms']:.2f} ms)")
    relay, sink = results.get("relay"), results.get("sink")
    if relay or sink:
        lines += ["", "## Pipeline", ""]
    if relay:
        lines.append(f"- relay: {relay['relay_events_per_s']:,.0f} events/s draining {relay['backlog_events']:,} "
                     f"(raw confluent-kafka produce {relay['raw_produce_per_s']:,.0f}/s, "
                     f"ratio {relay['relay_vs_raw']:.2f})")
        for rate, q in relay["commit_to_ack_at_rate"].items():
            lines.append(f"- relay commit-to-ack at a steady {rate} appends/s (sink idle): "
                         f"p50 {_fmt(q.get('p50_ms'))} ms, p99 {_fmt(q.get('p99_ms'))} ms, "
                         f"{_fmt((q.get('share_within_100ms') or 0) * 100)} % within 100 ms")
        under = relay["commit_to_ack_under_e2e_load"]
        lines.append(f"- relay commit-to-ack during the end-to-end runs (sink and DynamoDB Local busy): p50 "
                     f"{_fmt(under.get('p50_ms'))} ms, p99 {_fmt(under.get('p99_ms'))} ms, "
                     f"{_fmt((relay['commit_to_ack_share_within_100ms_under_e2e_load'] or 0) * 100)} % within 100 ms")
    if sink:
        lines.append(f"- sink: {sink['sink_items_per_s']:,.0f} items/s into DynamoDB Local "
                     f"(raw boto3 batch_write_item, {sink['raw_boto3_threads']} threads: "
                     f"{sink['raw_boto3_items_per_s']:,.0f}/s, ratio {sink['sink_vs_raw']:.2f})")
    for rate, run in results.get("e2e", {}).items():
        lines.append(f"- end to end at {rate} appends/s ({run['load']['created']:,} created in "
                     f"{run['load']['seconds']:.0f} s): commit-to-DynamoDB lag p50 {_fmt(run['lag_p50_ms'])} ms, "
                     f"p99 {_fmt(run['lag_p99_ms'])} ms ({run['lag_samples']} sampled bookings, "
                     f"{run['lag_not_seen']} not seen); outbox backlog max "
                     f"{max((n for _, n, _ in run['backlog_series']), default=0):,}")
    lines += importing.markdown(results.get("importing")) + streaming.markdown(results.get("streaming"))
    lines += _replicated(results.get("replicated")) + _audit(results.get("audit"))
    memory = results.get("memory")
    if memory:
        lines += ["", "## Memory (peak RSS)", "",
                  f"- API workers: {', '.join(f'{v:.0f} MB' for v in memory.get('api_worker_peak_rss_mb', []))}; "
                  f"relay {_fmt(memory.get('relay_peak_rss_mb'))} MB; sink {_fmt(memory.get('sink_peak_rss_mb'))} MB"]
    if results.get("errors"):
        lines += ["", "## Not measured", ""] + [f"- {k}: {v}" for k, v in results["errors"].items()]
    lines += ["", "Plots: throughput.png, latency.png, e2e_lag.png. Raw numbers: latest.json.", ""]
    return "\n".join(lines)


def _audit(audit: dict | None) -> list[str]:
    if not audit:
        return []
    lines = ["", "## The audit's cost (bench/audit_cost.py)", "",
             f"Appends over HTTP at 32 in flight (one in four creates a booking) by head and by the code at "
             f"{audit['before']} (schema 0015: no hash chain, no sealing), alternating, medians of "
             f"{audit['every']['head']['rounds']} rounds; `data.personal` in every append, or in the creating "
             "ones only:", "",
             "| data.personal in | code | appends/s | vs raw | p50 / p99 ms | Postgres CPU ms/append "
             "| API CPU ms/append | mean batch | head vs 0015 (by raw) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mix in ("every", "creates"):
        for name in ("0015", "head"):
            r = audit[mix][name]
            versus = (f"**{audit[mix]['head_vs_0015']:.2f}** ({audit[mix]['head_vs_0015_by_raw']:.2f})"
                      if name == "head" else "")
            lines.append(f"| {mix} | {name} | {r['appends_per_s']:,.0f} | {r['api_vs_raw']:.2f} | {r['p50_ms']:.1f} / "
                         f"{r['p99_ms']:.1f} | {r['postgres_cpu_ms_per_append']:.2f} | "
                         f"{r['api_cpu_ms_per_append']:.2f} | {r['mean_batch']:.1f} | {versus} |")
    return lines


def _replicated(replicated: dict | None) -> list[str]:
    if not replicated:
        return []
    levels = list(replicated["replicated_vs_single"]["api"])
    lines = ["", "## Synchronous replication: one Postgres against the replicated cluster (make run-ha's)", "",
             f"Strict synchronous mode, synchronous_standby_names = `{replicated['synchronous_standby_names']}`; "
             "the standbys run on the same two cores. Operations/s (p50 / p99 ms) by requests in flight.", "",
             "| system | Postgres | " + " | ".join(levels) + " |", "|---" * (len(levels) + 2) + "|"]
    for system, by_topology in replicated["throughput"].items():
        for topology, by_c in by_topology.items():
            cells = [f"{v['ops_per_s']:,.0f} ({v['p50_ms']:.1f} / {v['p99_ms']:.1f})" for v in by_c.values()]
            lines.append(f"| {system} | {topology} | " + " | ".join(cells) + " |")
    for system, by_c in replicated["replicated_vs_single"].items():
        lines.append(f"| *{system}: replicated / single* | | " + " | ".join(f"{v:.2f}" for v in by_c.values()) + " |")
    return lines


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = results.get("throughput", {})
    if throughput:
        fig, ax = plt.subplots(figsize=(7, 4))
        for system, by_c in throughput.items():
            levels = [int(c) for c in by_c]
            ax.plot(levels, [v["ops_per_s"] for v in by_c.values()], marker="o", label=system)
        ax.set(xscale="log", xlabel="requests in flight", ylabel="appends/s", title="Append throughput")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4))
        for n, (system, by_c) in enumerate(throughput.items()):
            levels = [int(c) for c in by_c]
            color = f"C{n}"
            ax.plot(levels, [v["p50_ms"] for v in by_c.values()], marker="o", color=color, label=f"{system} p50")
            ax.plot(levels, [v["p99_ms"] for v in by_c.values()], marker="x", linestyle="--", color=color,
                    label=f"{system} p99")
        ax.set(xscale="log", yscale="log", xlabel="requests in flight", ylabel="latency (ms)",
               title="Append latency")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=100)
        plt.close(fig)

    e2e = results.get("e2e", {})
    if e2e:
        fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        for rate, run in e2e.items():
            if run["lag_series"]:
                t, lag = zip(*run["lag_series"], strict=True)
                axes[0].plot(t, lag, ".", markersize=3, label=f"{rate} appends/s")
            if run["backlog_series"]:
                t, rows, _ = zip(*run["backlog_series"], strict=True)
                axes[1].plot(t, rows, label=f"{rate} appends/s")
        axes[0].set(ylabel="commit → DynamoDB (ms)", yscale="log", title="End-to-end lag and outbox backlog")
        axes[1].set(xlabel="seconds into the run", ylabel="outbox rows")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "e2e_lag.png", dpi=100)
        plt.close(fig)
