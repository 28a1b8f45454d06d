"""Trace context through the pipeline (W3C `traceparent`), and OpenTelemetry spans when exported.

One trace id follows a price change: the API takes it from the request's `traceparent` (or makes a
new trace when the header is absent or malformed; a bad header is never an error), logs it on the
request line, stores the append's `traceparent` with its outbox rows, the relay sends it as a Kafka
header and logs it per event sent, and the sink logs it with each DynamoDB write.

Spans (the API request, the append call, the relay's send, the sink's write) are made only when
`configure` was given an exporter: LEDGER_OTLP_ENDPOINT set, or a test's in-memory exporter. Without
one, `span()` touches no OpenTelemetry code at all: it hands back the context to pass on (the same
trace, a new span id where a span would have been), so the append path pays for a random number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as otel
from opentelemetry.context import Context

if TYPE_CHECKING:  # the SDK is imported only when spans are exported
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

HEADER = "traceparent"
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: its id, the current span's id, and the trace flags (01 = sampled)."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    flags: str = "00"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse(value: str | bytes | None) -> TraceContext | None:
    """The context a `traceparent` header carries, or None when it is absent or malformed.

    Version 00 is exactly `00-<32 hex>-<16 hex>-<2 hex>` in lowercase, ids not all zero; a later
    version may carry more after a further '-' (read as version 00, as the W3C text asks);
    version ff is invalid.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) < 55 or (len(value) > 55 and (value[:2] == "00" or value[55] != "-")):
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if (value[2] != "-" or value[35] != "-" or value[52] != "-" or version == "ff"
            or not _HEX.issuperset(version + trace_id + span_id + flags)
            or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN):
        return None
    return TraceContext(trace_id, span_id, flags)


def continued(parent: TraceContext | None) -> TraceContext:
    """The context of a new span under `parent` (a new trace when there is none), without a tracer."""
    if parent is None:
        return TraceContext(os.urandom(16).hex(), os.urandom(8).hex())
    return TraceContext(parent.trace_id, os.urandom(8).hex(), parent.flags)


class _Untraced:
    """`span()` while no spans are exported: hands out the context to pass on, and records nothing."""

    __slots__ = ("context",)

    def __init__(self, context: TraceContext) -> None:
        self.context = context

    def __enter__(self) -> TraceContext:
        return self.context

    def __exit__(self, *_: object) -> None:
        return None

    def end(self, **attributes: Any) -> None:
        return None


class _Traced:
    """An OpenTelemetry span around a block (or ended by `end()`), with its context to pass on."""

    __slots__ = ("context", "span")

    def __init__(self, span: otel.Span) -> None:
        self.span = span
        own = span.get_span_context()
        self.context = TraceContext(format(own.trace_id, "032x"), format(own.span_id, "016x"),
                                    format(own.trace_flags, "02x"))

    def __enter__(self) -> TraceContext:
        return self.context

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(otel.Status(otel.StatusCode.ERROR, type(error).__name__))
        self.span.end()

    def end(self, **attributes: Any) -> None:
        """End the span, with `attributes` added (what became known meanwhile: a status, a size)."""
        if attributes:
            self.span.set_attributes(attributes)
        self.span.end()


Spanned = _Untraced | _Traced

_tracer: otel.Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, endpoint: str = "", exporter: SpanExporter | None = None) -> None:
    """Export this process's spans: to the OTLP/HTTP collector at `endpoint` (batched, in the
    background), or to `exporter` as each span ends (tests). Neither: no spans, and no cost."""
    global _tracer, _provider
    shutdown()
    if not endpoint and exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"booking-ledger-{service}"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint))))
    _provider, _tracer = provider, provider.get_tracer("booking_ledger")


def _traces_url(endpoint: str) -> str:
    """The collector's traces URL: `endpoint` as given when it names a path, else `<endpoint>/v1/traces`."""
    _scheme, _, rest = endpoint.partition("://")
    return endpoint if "/" in rest.strip("/") else f"{endpoint.rstrip('/')}/v1/traces"


def shutdown() -> None:
    """Send what is still buffered and stop exporting (a process's end, a test's)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def span(name: str, parent: TraceContext | None, kind: str = "internal", **attributes: Any) -> Spanned:
    """A span named `name` under `parent` (a new trace when None), as a context manager giving the
    context to pass on; or, unused as one, ended by `.end()`. `kind`: internal, server, producer or
    consumer. Without an exporter, nothing is recorded."""
    if _tracer is None:
        return _Untraced(continued(parent))
    return _Traced(_tracer.start_span(name, context=_parent_context(parent), kind=_kind(kind),
                                      attributes=attributes))


def _parent_context(parent: TraceContext | None) -> Context:
    if parent is None:
        return Context()  # a root: not whatever span this thread may have current
    remote = otel.SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
                              trace_flags=otel.TraceFlags(int(parent.flags, 16)))
    return otel.set_span_in_context(otel.NonRecordingSpan(remote))


_KINDS = {"internal": otel.SpanKind.INTERNAL, "server": otel.SpanKind.SERVER, "producer": otel.SpanKind.PRODUCER,
          "consumer": otel.SpanKind.CONSUMER}


def _kind(kind: str) -> otel.SpanKind:
    return _KINDS[kind]
