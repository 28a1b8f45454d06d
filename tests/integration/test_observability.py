"""What the relay and sink processes tell Prometheus: each only its own series, with a Content-Type
that strict scrapers (Prometheus 3 parses it with Go's mime.ParseMediaType) accept."""

from __future__ import annotations

import httpx

from tests.conftest import free_port
from tests.e2e.test_operations import METRICS_CONTENT_TYPES, assert_one_of_each_parameter
from tests.integration.conftest import Pipeline, wait_until

RELAY_SERIES = ("ledger_relay_", "ledger_outbox_")
SINK_SERIES = ("ledger_sink_", "ledger_dynamodb_")


def series(text: str) -> set[str]:
    """The metric names a scrape carries (from its HELP lines)."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}


def scrape_when_up(port: int, accept: str = "*/*") -> httpx.Response:
    def get() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept}, timeout=5)
        except httpx.HTTPError:
            return None

    return wait_until(get, 60, what=f"metrics on port {port}")


def test_relay_and_sink_export_only_their_own_series(pipeline: Pipeline) -> None:
    relay_port, sink_port = free_port(), free_port()
    pipeline.start("relay", LEDGER_RELAY_METRICS_PORT=str(relay_port))
    pipeline.start("sink", LEDGER_SINK_METRICS_PORT=str(sink_port))
    for accept, content_type in METRICS_CONTENT_TYPES.items():
        for port in (relay_port, sink_port):
            answer = scrape_when_up(port, accept)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == content_type
            assert_one_of_each_parameter(content_type)
    relay, sink = scrape_when_up(relay_port), scrape_when_up(sink_port)

    relay_names, sink_names = series(relay.text), series(sink.text)
    assert "ledger_relay_leader" in relay_names and "ledger_outbox_backlog" in relay_names
    assert "ledger_sink_written_total" in sink_names and "ledger_sink_commit_to_write_seconds" in sink_names
    assert not [name for name in relay_names if name.startswith(SINK_SERIES)]
    assert not [name for name in sink_names if name.startswith(RELAY_SERIES)]
    # Both still carry the process series the default registry had.
    assert "process_cpu_seconds_total" in relay_names and "process_cpu_seconds_total" in sink_names
