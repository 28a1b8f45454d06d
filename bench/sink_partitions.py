"""The sink with a skewed backlog: does a small partition drain while a hot one is still draining?

    .venv/bin/python -m bench.sink_partitions --hot 40000 --small 5000

A private stack (a 3-node Kafka cluster and DynamoDB Local on free loopback ports), one sink process
and a topic of 3 partitions. Two cases, each on its own topic, group and table:

- `running`: the sink is caught up; `--hot` events arrive on partition 0, then `--small` on each of
  partitions 1 and 2 (events of other bookings committed just after an import, say);
- `backlog`: the whole backlog is in the topic before the sink starts.

Every 0.25 s the group's committed offsets are read (what DynamoDB accepted, up to the sink's commit
interval of 1 s). The report: per partition, the seconds from the first event produced (`running`) or
from the sink's start (`backlog`) until it had drained; what the hot partition still held when the
others had drained; items/s over the whole backlog.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.stack import LedgerProcess, Stack
from cdc.kafka import ensure_topic, producer_config
from core.events import Event, Price, encode_event
from core.settings import KafkaSettings, Settings

PARTITIONS = 3
HOT = 0


def event_message(code: str) -> bytes:
    """The Event JSON of a first price of booking `code`, as the relay sends it."""
    now = datetime.now(UTC)
    return encode_event(Event(event_id=uuid.uuid4(), booking_code=code, version=1, type="BookingPriced",
                              price=Price("120.00", "EUR"), data={"reason": "bench"}, department="bench",
                              occurred_at=now, recorded_at=now, position=1))


def produce(kafka: KafkaSettings, counts: dict[int, int], started: float = 0.0,
            prefix: str = "SKEW") -> dict[int, float]:
    """`counts[p]` events (new bookings) straight onto partition p, not by their key's hash, partition
    after partition in the order given; the seconds from `started` until each partition's were all
    acknowledged."""
    producer = Producer(producer_config(kafka))
    acknowledged = {}
    for partition, count in counts.items():
        for i in range(count):
            code = f"{prefix}{partition}-{i}"
            producer.produce(kafka.topic, key=code, value=event_message(code), partition=partition)
            if i % 10_000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        acknowledged[partition] = round(time.monotonic() - started, 2)
    return acknowledged


def committed(reader: Consumer, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (0 without one; {} while the group cannot answer)."""
    try:
        found = reader.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    except KafkaException:  # the group coordinator is still loading
        return {}
    return {tp.partition: max(tp.offset, 0) for tp in found}


@dataclass
class Drain:
    """Seconds from the start until each partition's committed offset reached its end, and how much of
    the hot partition's backlog was left when every other partition had drained."""

    drained: dict[int, float] = field(default_factory=dict)
    hot_left: int | None = None


def watch(kafka: KafkaSettings, ends: dict[int, int], started: float, timeout: float) -> Drain:
    """Samples the group's committed offsets every 0.25 s until every partition reached its end."""
    reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": kafka.sink_group,
                       "enable.auto.commit": False})
    drain = Drain()
    try:
        while len(drain.drained) < len(ends) and time.monotonic() - started < timeout:
            offsets = committed(reader, kafka.topic)
            for partition, offset in offsets.items():
                if partition not in drain.drained and offset >= ends[partition]:
                    drain.drained[partition] = round(time.monotonic() - started, 2)
            if drain.hot_left is None and all(p in drain.drained for p in ends if p != HOT) and HOT in offsets:
                drain.hot_left = ends[HOT] - offsets[HOT]
            time.sleep(0.25)
    finally:
        reader.close()
    return drain


def skewed(settings: Settings, start_sink: Callable[[], object], case: str, hot: int, small: int,
           timeout: float) -> dict[str, object]:
    """The backlog `hot` on partition 0 and `small` on each other partition through one sink, in
    `case` "running" (the sink started and caught up first) or "backlog" (the sink started after)."""
    kafka = settings.kafka
    ensure_topic(kafka)
    counts = {HOT: hot, **{p: small for p in range(PARTITIONS) if p != HOT}}
    base = 0
    if case == "running":
        start_sink()
        base = 1  # one event each: the sink is up and assigned
        produce(kafka, dict.fromkeys(range(PARTITIONS), 1), prefix="WARM")
        if len(watch(kafka, dict.fromkeys(range(PARTITIONS), 1), time.monotonic(), 90).drained) < PARTITIONS:
            raise RuntimeError("the sink did not start")
    started = time.monotonic()
    produced = produce(kafka, counts, started)
    if case == "backlog":
        started = time.monotonic()
        start_sink()
    drain = watch(kafka, {p: base + c for p, c in counts.items()}, started, timeout)
    last = max(drain.drained.values()) if len(drain.drained) == PARTITIONS else None
    return {"case": case, "events": counts, "produced_s": produced, "drained_s": drain.drained,
            "hot_left_when_others_drained": drain.hot_left,
            "items_per_s": round(sum(counts.values()) / last) if last else None}


def run_case(stack: Stack, case: str, hot: int, small: int, timeout: float) -> dict[str, object]:
    name = uuid.uuid4().hex[:8]
    settings = stack.settings()
    kafka = replace(settings.kafka, topic=f"skew-{name}", sink_group=f"sink-{name}", partitions=PARTITIONS)
    settings = replace(settings, kafka=kafka, dynamo=replace(settings.dynamo, table=f"skew_{name}"))
    sinks: list[LedgerProcess] = []
    try:
        def start_sink() -> None:
            sinks.append(stack.start("sink", settings, LEDGER_SINK_METRICS_PORT="0"))

        return skewed(settings, start_sink, case, hot, small, timeout)
    finally:
        for sink in sinks:
            sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hot", type=int, default=40_000)
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--case", action="append", choices=["running", "backlog"])
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-sink-partitions-")))
    try:
        stack.start_pipeline_servers(kafka_nodes=3)
        for case in args.case or ["running", "backlog"]:
            print(json.dumps(run_case(stack, case, args.hot, args.small, args.timeout)), flush=True)
    finally:
        stack.stop()
    stack.remove()  # only after a run that ended well: a failed one keeps its logs


if __name__ == "__main__":
    main()
