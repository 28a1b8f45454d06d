"""Prometheus metrics of the relay and the sink; each process serves its own /metrics.

Prometheus scrapes every relay (LEDGER_RELAY_METRICS_PORT) and sink (LEDGER_SINK_METRICS_PORT)
process, and the API at /metrics; `make run` serves them on 9101 and 9102.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("booking_ledger.metrics")

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

RELAY_LEADER = Gauge("ledger_relay_leader", "1 while this relay holds the lease and sends, else 0.")
RELAY_LEADER_INFO = Gauge(
    "ledger_relay_leader_info", "Present (value 1) only while this relay leads: names its host and pid.",
    ["host", "pid"],
)
RELAY_SENT = Counter("ledger_relay_sent_total", "Events acknowledged by Kafka and removed from the outbox.")
RELAY_FAILED = Counter("ledger_relay_delivery_failures_total", "Events Kafka did not acknowledge (sent again).")
RELAY_COMMIT_TO_ACK = Histogram(
    "ledger_relay_commit_to_ack_seconds", "From the append's transaction to Kafka's acknowledgement.",
    buckets=LAG_BUCKETS,
)
OUTBOX_BACKLOG = Gauge("ledger_outbox_backlog", "Events in the outbox, not yet acknowledged by Kafka.")
OUTBOX_OLDEST_AGE = Gauge("ledger_outbox_oldest_age_seconds", "Age of the oldest event still in the outbox.")

SINK_WRITTEN = Counter("ledger_sink_written_total", "Events written to DynamoDB (redeliveries included).")
SINK_DEAD_LETTERS = Counter("ledger_sink_dead_letters_total", "Messages moved to the dead-letter topic.")
DYNAMODB_RETRIES = Counter("ledger_dynamodb_retries_total", "DynamoDB batch writes retried, by reason.", ["reason"])
SINK_CONSUMER_LAG = Gauge(
    "ledger_sink_consumer_lag",
    "Messages in a partition this sink owns that it has not yet written to DynamoDB (high watermark as of "
    "its last fetch minus its next offset to store).",
    ["partition"],
)
SINK_COMMIT_TO_WRITE = Histogram(
    "ledger_sink_commit_to_write_seconds", "From the append's transaction to the DynamoDB write.", buckets=LAG_BUCKETS,
)


def serve(host: str, port: int, what: str) -> None:
    """Serve this process's metrics on host:port (0: not served)."""
    if port:
        start_http_server(port, addr=host)
        log.info("%s metrics on http://%s:%d/metrics", what, host, port)


def observe_lag(histogram: Histogram, recorded: Iterable[datetime]) -> None:
    now = time.time()
    for at in recorded:
        histogram.observe(max(0.0, now - at.timestamp()))
