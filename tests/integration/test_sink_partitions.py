"""The sink's partitions progress side by side: a backlog on one partition does not hold back the
events of the others (bench/sink_partitions.py measures the same at a larger size)."""

from __future__ import annotations

from bench.sink_partitions import HOT, skewed
from tests.integration.conftest import Pipeline

HOT_EVENTS = 40_000
SMALL_EVENTS = 200


def test_a_hot_partition_does_not_hold_back_the_others(pipeline: Pipeline) -> None:
    # The sink is caught up when HOT_EVENTS arrive on one partition, then SMALL_EVENTS on each other
    # one. Those must be in DynamoDB while much of the hot backlog still waits, not after all of it:
    # drained ~3 s into an ~11 s hot drain on an idle machine, earlier still under load. Offsets
    # are committed every 0.1 s so that the sampled progress is not the commit interval's.
    def start_sink() -> None:
        pipeline.start("sink", LEDGER_SINK_COMMIT_INTERVAL_MS="100")

    report = skewed(pipeline.settings, start_sink, "running", HOT_EVENTS, SMALL_EVENTS, timeout=120)
    drained, hot_left = report["drained_s"], report["hot_left_when_others_drained"]
    assert isinstance(drained, dict) and len(drained) == 3, f"not every partition drained: {report}"
    assert isinstance(hot_left, int) and hot_left >= HOT_EVENTS // 4, f"the others waited for the hot one: {report}"
    assert drained[HOT] > max(seconds for partition, seconds in drained.items() if partition != HOT)
