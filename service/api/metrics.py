"""Prometheus metrics of the API. With several worker processes, each writes its samples to
PROMETHEUS_MULTIPROC_DIR (set by `booking-ledger api`) and /metrics sums them (gauges: as their
`multiprocess_mode` says, over the live workers)."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
from litestar.exceptions import HTTPException
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from service.api.problems import ApiError, ClientGone
from service.ledger.append import AppendResult
from service.ledger.errors import LedgerError

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

# Each worker's own value; /metrics shows the lowest of the live workers': 0 if any one does not listen.
KEY_LISTENER_UP = Gauge(
    "ledger_key_listener_up",
    "1 while this worker hears key changes (LISTEN on the primary), so its key cache is used; else 0.",
    multiprocess_mode="livemin",
)

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


class AppendCount:
    """What the metrics record of one append request, told by the route as it goes."""

    __slots__ = ("outcome", "started")

    def __init__(self) -> None:
        self.outcome = "internal_error"
        self.started: float | None = None

    def start(self) -> None:
        """The body is read: the duration measures the work from here, not how slowly a client sends."""
        self.started = time.perf_counter()

    def answered(self, result: AppendResult) -> None:
        self.outcome = "replayed" if result.replayed else "appended"
        if not result.replayed:
            APPENDED_EVENTS.inc(len(result.events))


@contextmanager
def counting_append() -> Iterator[AppendCount]:
    """Count one append request in ledger_appends_total, labelled by its outcome (`appended`,
    `replayed`, or what it failed with), and time it in ledger_append_duration_seconds once started."""
    count = AppendCount()
    try:
        yield count
    except Exception as error:
        count.outcome = _append_failure(error)
        raise
    finally:
        APPENDS.labels(count.outcome).inc()
        if count.started is not None:
            APPEND_SECONDS.observe(time.perf_counter() - count.started)


def _append_failure(error: Exception) -> str:
    if isinstance(error, LedgerError | ApiError | ClientGone):
        return error.code
    if isinstance(error, msgspec.DecodeError):  # includes ValidationError
        return "validation_error"
    if isinstance(error, HTTPException):  # e.g. 413 while reading the body
        return f"http_{error.status_code}"
    return "internal_error"


def render(accept: str) -> tuple[bytes, str]:
    """The exposition of every worker's samples in the format `accept` asks for, and its exact
    Content-Type, negotiated as the relay's and sink's /metrics do (the header is sent as is)."""
    encode, content_type = choose_encoder(accept)
    if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        forget_dead_workers(directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return encode(registry), content_type
    return encode(REGISTRY), content_type


def forget_dead_workers(directory: str) -> None:
    """Remove the live-gauge files of worker processes that have exited. The `live*` modes count a
    worker as long as its file is there, and nothing else removes it: granian starts a new worker
    (a new pid) for one that failed, and a dead worker's `ledger_key_listener_up 0` or open streams
    would stay in the sum until the API restarts."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)
        except PermissionError:  # alive, someone else's
            pass
