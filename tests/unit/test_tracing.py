"""W3C trace context (parsing, continuing a trace) and the spans core.tracing makes, on the SDK's
in-memory exporter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from core import tracing
from core.tracing import TraceContext

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure("test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def test_a_valid_traceparent_is_read() -> None:
    assert tracing.parse(VALID) == TraceContext(TRACE, SPAN, "01")
    assert tracing.parse(VALID.encode()) == TraceContext(TRACE, SPAN, "01")
    assert tracing.parse(VALID).traceparent == VALID  # type: ignore[union-attr]
    # A later version may carry more fields; what version 00 defines is read from it.
    assert tracing.parse(f"cc-{TRACE}-{SPAN}-01-what-comes-later") == TraceContext(TRACE, SPAN, "01")


@pytest.mark.parametrize("value", [
    None, "", "garbage", VALID.upper(), VALID + "-", VALID[:-1], " " + VALID, VALID + "\n",
    f"00-{'0' * 32}-{SPAN}-01",          # trace id all zero
    f"00-{TRACE}-{'0' * 16}-01",         # span id all zero
    f"ff-{TRACE}-{SPAN}-01",             # version ff is invalid
    f"00-{TRACE}-{SPAN}-01-more",        # version 00 is exactly 55 characters
    f"cc-{TRACE}-{SPAN}-01more",         # a later version's extra part starts with '-'
    f"00_{TRACE}-{SPAN}-01", f"00-{TRACE[:-1]}g-{SPAN}-01", f"00-{TRACE}-{SPAN}-0x",
    "00-" + "é" * 32 + f"-{SPAN}-01", b"\xff" * 55,
])
def test_a_malformed_traceparent_is_no_context(value: str | bytes | None) -> None:
    assert tracing.parse(value) is None


def test_without_an_exporter_spans_cost_nothing_and_carry_the_trace_on() -> None:
    assert not tracing.enabled()
    parent = TraceContext(TRACE, SPAN, "01")
    with tracing.span("work", parent) as context:
        assert (context.trace_id, context.flags) == (TRACE, "01") and context.span_id != SPAN
        assert tracing.parse(context.traceparent) == context
    fresh = tracing.span("work", None).context
    assert tracing.parse(fresh.traceparent) == fresh and fresh.trace_id != TRACE
    assert tracing.span("work", None).context.trace_id != fresh.trace_id


def test_spans_follow_the_given_context(exported: InMemorySpanExporter) -> None:
    parent = TraceContext(TRACE, SPAN, "01")
    with tracing.span("request", parent, "server", route="/v1") as request:
        with tracing.span("append", request, booking_code="B-1") as append:
            pass
    send = tracing.span("send", tracing.parse(append.traceparent), "producer")
    send.end(error="timed out")
    by_name = {span.name: span for span in exported.get_finished_spans()}
    assert set(by_name) == {"request", "append", "send"}
    assert {format(span.context.trace_id, "032x") for span in by_name.values()} == {TRACE}
    assert format(by_name["request"].parent.span_id, "016x") == SPAN  # type: ignore[union-attr]
    assert by_name["append"].parent.span_id == by_name["request"].context.span_id  # type: ignore[union-attr]
    assert by_name["send"].parent.span_id == by_name["append"].context.span_id  # type: ignore[union-attr]
    assert format(by_name["append"].context.span_id, "016x") == append.span_id
    assert by_name["request"].kind == SpanKind.SERVER and by_name["send"].kind == SpanKind.PRODUCER
    assert by_name["request"].attributes == {"route": "/v1"}
    assert by_name["send"].attributes == {"error": "timed out"}
    assert by_name["request"].resource.attributes["service.name"] == "booking-ledger-test"


def test_a_span_without_a_parent_starts_a_sampled_trace_and_records_a_failure(exported: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("request", None) as context:
        raise ValueError("refused")
    [span] = exported.get_finished_spans()
    assert span.parent is None and format(span.context.trace_id, "032x") == context.trace_id
    assert int(context.flags, 16) & 1  # sampled (the SDK may set the "random" flag too)
    assert span.status.status_code == StatusCode.ERROR and span.events[0].name == "exception"


def test_an_unsampled_parent_is_followed_but_not_recorded(exported: InMemorySpanExporter) -> None:
    with tracing.span("request", TraceContext(TRACE, SPAN, "00")) as context:
        pass
    assert exported.get_finished_spans() == ()
    assert context.trace_id == TRACE and context.flags == "00"


def test_the_collector_url() -> None:
    assert tracing._traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing._traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing._traces_url("https://collector/otlp/v1/traces") == "https://collector/otlp/v1/traces"


def test_with_an_endpoint_spans_leave_over_otlp_http() -> None:
    """What LEDGER_OTLP_ENDPOINT turns on: spans POSTed as OTLP protobuf to <endpoint>/v1/traces, sent
    at the latest when the process ends (shutdown). The receiver here decodes them with the OTLP
    protocol's own messages."""
    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracing.configure("relay", endpoint=f"http://127.0.0.1:{server.server_port}")
        assert tracing.enabled()
        with tracing.span("relay.send", TraceContext(TRACE, SPAN, "01"), "producer", version=3):
            pass
        tracing.shutdown()
    finally:
        server.shutdown()
    [(path, content_type, body)] = received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    assert {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"] == (
        "booking-ledger-relay")
    [span] = resource_spans.scope_spans[0].spans
    assert span.name == "relay.send" and span.trace_id.hex() == TRACE and span.parent_span_id.hex() == SPAN
    assert not tracing.enabled()
