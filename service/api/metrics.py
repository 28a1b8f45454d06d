"""Prometheus metrics of the API. With several worker processes, each writes its samples to
PROMETHEUS_MULTIPROC_DIR (set by `booking-ledger api`) and /metrics sums them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

APPENDS = Counter("ledger_appends_total", "Append requests answered, by outcome code.", ["outcome"])
APPENDED_EVENTS = Counter("ledger_appended_events_total", "Events newly written to the ledger.")
APPEND_SECONDS = Histogram(
    "ledger_append_duration_seconds",
    "Time to answer an append request, from the body read to the answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

APPEND_BATCH_SIZE = Histogram(
    "ledger_append_batch_size",
    "Appends carried by one call to Postgres (group commit: those that queued while the previous call ran).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
STREAMS_OPEN = Gauge("ledger_event_streams_open", "Event streams (GET /v1/events/stream) open now.",
                     multiprocess_mode="livesum")
STREAMS_ENDED = Counter("ledger_event_streams_ended_total", "Event streams ended, by reason.", ["reason"])

READS = Counter("ledger_reads_total", "Read requests answered, by route and outcome code.", ["route", "outcome"])


@contextmanager
def counting_read(route: str) -> Iterator[None]:
    """Count one read of `route` in ledger_reads_total, labelled `ok` or by the error's code."""
    outcome = "internal_error"
    try:
        yield
        outcome = "ok"
    except Exception as error:
        outcome = getattr(error, "code", None) or outcome  # LedgerError and ApiError carry one
        raise
    finally:
        READS.labels(route, outcome).inc()


def render(accept: str) -> tuple[bytes, str]:
    """The exposition of every worker's samples in the format `accept` asks for, and its exact
    Content-Type, negotiated as the relay's and sink's /metrics do (the header is sent as is)."""
    encode, content_type = choose_encoder(accept)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return encode(registry), content_type
    return encode(REGISTRY), content_type
