"""Prometheus metrics of the relay and the sink; each process serves its own /metrics.

Prometheus scrapes every relay (LEDGER_RELAY_METRICS_PORT) and sink (LEDGER_SINK_METRICS_PORT)
process, and the API at /metrics; `make run` serves them on 9101 and 9102.

Each component builds its own registry when it is built (RelayMetrics, SinkMetrics), never at
import: a relay process then exports no sink series and a sink process no relay series (a
`ledger_relay_leader 0` on a sink's port would make a `min(ledger_relay_leader)` alert fire).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger("booking_ledger.metrics")

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def _registry() -> CollectorRegistry:
    """A registry with the process, platform and GC series the default registry would carry."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class RelayMetrics:
    """The relay's series, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = _registry()
        self.leader = Gauge("ledger_relay_leader", "1 while this relay holds the lease and sends, else 0.",
                            registry=registry)
        self.leader_info = Gauge(
            "ledger_relay_leader_info", "Present (value 1) only while this relay leads: names its host and pid.",
            ["host", "pid"], registry=registry,
        )
        self.sent = Counter("ledger_relay_sent_total", "Events acknowledged by Kafka and removed from the outbox.",
                            registry=registry)
        self.failed = Counter("ledger_relay_delivery_failures_total",
                              "Events Kafka did not acknowledge (sent again).", registry=registry)
        self.commit_to_ack = Histogram(
            "ledger_relay_commit_to_ack_seconds", "From the append's transaction to Kafka's acknowledgement.",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.standby_wait = Histogram(
            "ledger_relay_standby_wait_seconds",
            "Per batch, the wait for the synchronous standby to hold it before it is sent.",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.outbox_backlog = Gauge("ledger_outbox_backlog", "Events in the outbox, not yet acknowledged by Kafka.",
                                    registry=registry)
        self.outbox_oldest_age = Gauge("ledger_outbox_oldest_age_seconds",
                                       "Age of the oldest event still in the outbox.", registry=registry)


class SinkMetrics:
    """The sink's series, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = _registry()
        self.written = Counter("ledger_sink_written_total", "Events written to DynamoDB (redeliveries included).",
                               registry=registry)
        self.dead_letters = Counter("ledger_sink_dead_letters_total", "Messages moved to the dead-letter topic.",
                                    registry=registry)
        self.dynamodb_retries = Counter("ledger_dynamodb_retries_total", "DynamoDB batch writes retried, by reason.",
                                        ["reason"], registry=registry)
        self.dynamodb_failing = Gauge(
            "ledger_sink_dynamodb_failing",
            "1 from a DynamoDB write that failed (an error, or items left unprocessed) until one is accepted, else 0.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "ledger_sink_consumer_lag",
            "Messages in a partition this sink owns that it has not yet written to DynamoDB (high watermark as of "
            "its last fetch minus its next offset to store).",
            ["partition"], registry=registry,
        )
        self.commit_to_write = Histogram(
            "ledger_sink_commit_to_write_seconds",
            "From the append's transaction to the DynamoDB write, for events the sink's group reads for the first "
            "time (not what a partition read from its beginning held already: see cdc/sink.py).",
            buckets=LAG_BUCKETS, registry=registry,
        )


class DeliverMetrics:
    """The webhook worker's series (`booking-ledger deliver`), on a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = _registry()
        self.leader = Gauge("ledger_webhook_leader", "1 while this worker holds the lease and delivers, else 0.",
                            registry=registry)
        self.deliveries = Counter(
            "ledger_webhook_deliveries_total",
            "Delivery attempts by result: delivered (a 2xx), failed (any other answer, a timeout, a refused "
            "address).", ["result"], registry=registry)
        self.events = Counter("ledger_webhook_events_delivered_total", "Events acknowledged by receivers.",
                              registry=registry)
        self.commit_to_ack = Histogram(
            "ledger_webhook_commit_to_ack_seconds", "From the append's transaction to the receiver's 2xx.",
            buckets=LAG_BUCKETS, registry=registry)
        self.lag = Gauge(
            "ledger_webhook_lag_seconds",
            "Per active subscription: age of the oldest event it still has to deliver (0 when caught up).",
            ["subscription"], registry=registry)
        self.paused = Gauge("ledger_webhook_paused_subscriptions", "Subscriptions paused on a failing event.",
                            registry=registry)
        self.active = Gauge("ledger_webhook_active_subscriptions",
                            "Subscriptions this worker delivers to (active, their key not revoked).",
                            registry=registry)


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> None:
    """Serve `registry` on host:port (0: not served)."""
    if port:
        start_http_server(port, addr=host, registry=registry)
        log.info("%s metrics on http://%s:%d/metrics", what, host, port)


def observe_lag(histogram: Histogram, recorded: Iterable[datetime]) -> None:
    now = time.time()
    for at in recorded:
        histogram.observe(max(0.0, now - at.timestamp()))
