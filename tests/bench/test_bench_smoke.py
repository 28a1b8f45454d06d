"""`make bench` in miniature: every measurement runs for a second or two, so the bench cannot rot.

Only that each figure was measured is checked, never how good it is (the machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.pipeline import histogram_quantiles
from bench.report import targets

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_the_bench_measures_everything_it_reports(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["errors"] == {}
    for system in ("api", "raw", "minimal", "message_db", "eventsourcing"):
        for level in ("1", "32"):
            run = results["throughput"][system][level]
            assert run["ops_per_s"] > 0 and run["errors"] == 0, (system, level, run)
    assert set(results["ratios"]) == {"api_vs_raw", "api_vs_minimal", "api_vs_message_db", "api_vs_eventsourcing"}
    assert all(v > 0 for by_c in results["ratios"].values() for v in by_c.values())
    assert results["growth"]["growth_ratio"] > 0
    for read in results["growth"]["reads"]["grown"].values():  # the API's reads and the JSON Postgres builds
        # Measured (a 1-second smoke run of 1,000-event reads on a busy machine may complete none).
        assert read["ops_per_s"] >= 0 and read["postgres_json"]["ops_per_s"] >= 0 and "api_vs_postgres_json" in read
    assert results["growth"]["events_in_grown_ledger"] >= 2_000
    assert results["relay"]["relay_events_per_s"] > 0 and results["relay"]["raw_produce_per_s"] > 0
    assert results["sink"]["sink_items_per_s"] > 0 and results["sink"]["raw_boto3_items_per_s"] > 0
    e2e = results["e2e"]["50"]
    assert e2e["load"]["created"] == e2e["load"]["sent"] and e2e["lag_samples"] > 0 and e2e["lag_not_seen"] == 0
    imported = results["importing"]
    assert imported["events_per_s"] > 0 and imported["rerun_events_per_s"] > 0
    stream = results["streaming"]
    assert stream["deliveries"] > 0 and stream["missing"] == 0 and stream["reader_errors"] == []
    for mix in ("every", "creates"):  # head and the code at 0015, on databases their own migrations made
        audit = results["audit"][mix]
        assert audit["head"]["appends_per_s"] > 0 and audit["0015"]["appends_per_s"] > 0 and audit["head_vs_0015"] > 0
    memory = results["memory"]
    assert len(memory["api_worker_peak_rss_mb"]) == 2 and memory["relay_peak_rss_mb"] > 0
    assert all(row["value"] is not None for row in results["targets"]), results["targets"]
    markdown = (tmp_path / "latest.md").read_text()
    assert "| api_vs_raw at 32 in flight |" in markdown and "## Growth" in markdown
    assert "## Import" in markdown and "## Live stream" in markdown and "## The audit's cost" in markdown
    for plot in ("throughput.png", "latency.png", "e2e_lag.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



@pytest.mark.timeout(400)
def test_the_scale_bench_measures_each_step(tmp_path: Path) -> None:
    # bench.scale in miniature: one step of a few thousand imported events, a second per case.
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--steps", "6000", "--seconds", "1",
                           "--rounds", "1", "--tail", "500", "--chunk", "3000", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert list(results["steps"]) == ["0", "6000"]
    for step in results["steps"].values():
        assert step["drain"]["grown"] > 0 and step["drain"]["small"] > 0
        for nightly in step["nightly"].values():
            assert nightly["replay_events_per_s"] > 0 and nightly["verify_since_events_per_s"] > 0
        for case in ("appends_1", "appends_32", "price_as_of_1", "booking_1", "feed_page_500_at_8"):
            figures = step["api"][case]
            assert figures["grown"]["errors"] == 0 and figures["small"]["errors"] == 0, (case, figures)
            assert figures["grown"]["ops_per_s"] > 0 and figures["rate_ratio"] > 0, (case, figures)
        assert set(step["disk"]["relations"]) >= {"events", "events_pkey", "events_event_id_key", "bookings"}
    grown = results["steps"]["6000"]
    assert grown["growth"]["events"] == 6000 and grown["growth"]["events_per_s"] > 0
    # The base (2,000 events), the warm-up's and each step's tail, the appends: at least what was imported.
    assert grown["disk"]["events"] >= 6000 + 2000
    markdown = (tmp_path / "latest.md").read_text()
    assert "| 6,000 |" in markdown and "## Targets at the last step" in markdown

def test_quantiles_come_from_cumulative_buckets_like_prometheus() -> None:
    name = "lag_seconds"
    metrics = {f'{name}_bucket{{le="0.01"}}': 50.0, f'{name}_bucket{{le="0.1"}}': 99.0,
               f'{name}_bucket{{le="1.0"}}': 100.0, f'{name}_bucket{{le="+Inf"}}': 100.0}
    found = histogram_quantiles(metrics, name)
    assert found["p50_ms"] == pytest.approx(10.0)
    assert found["p99_ms"] == pytest.approx(100.0)
    assert histogram_quantiles({}, name) == {"p50_ms": None, "p99_ms": None}


def test_targets_say_met_missed_or_not_measured() -> None:
    rows = {r["target"]: r for r in targets({"ratios": {"api_vs_raw": {"32": 1.05}}, "growth": {"growth_ratio": 0.5}})}
    assert rows["api_vs_raw at 32 in flight"]["met"] is True
    assert rows["growth_ratio"]["met"] is False
    assert rows["sink_vs_raw (boto3)"]["met"] is None


def test_the_replication_table_shows_each_topology_and_the_ratio() -> None:
    # The replicated section is measured by the full bench only (its cluster takes half a minute to start).
    run = {"ops_per_s": 1000.0, "p50_ms": 2.0, "p99_ms": 9.0}
    results = {"replicated": {
        "synchronous_standby_names": "node1",
        "throughput": {system: {topology: {"1": run, "32": run} for topology in ("single", "replicated")}
                       for system in ("api", "raw")},
        "replicated_vs_single": {"api": {"1": 0.9, "32": 0.87}, "raw": {"1": 0.25, "32": 0.8}}}}
    markdown = report.markdown(results)
    assert "synchronous_standby_names = `node1`" in markdown
    assert "| api | replicated | 1,000 (2.0 / 9.0) | 1,000 (2.0 / 9.0) |" in markdown
    assert "| *raw: replicated / single* | | 0.25 | 0.80 |" in markdown
