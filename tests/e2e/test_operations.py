"""What operators get from the API processes: a /metrics answer that strict scrapers accept, and log
lines that are one record each and safe to show on a terminal."""

from __future__ import annotations

import httpx

# What Prometheus 3 asks for by default (its scrape protocols, best first).
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
# Accept header -> the exact Content-Type every /metrics (API, relay, sink) answers with.
METRICS_CONTENT_TYPES = {
    "*/*": "text/plain; version=0.0.4; charset=utf-8",
    PROMETHEUS_3_ACCEPT: "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
}


def assert_one_of_each_parameter(content_type: str) -> None:
    """What Go's mime.ParseMediaType insists on: no parameter twice ("duplicate parameter name")."""
    names = [part.split("=", 1)[0].strip().lower() for part in content_type.split(";")[1:]]
    assert len(names) == len(set(names)), content_type


def test_metrics_content_type_is_exact_and_has_no_duplicate_parameter(api: str) -> None:
    for accept, expected in METRICS_CONTENT_TYPES.items():
        answer = httpx.get(f"{api}/metrics", headers={"Accept": accept}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == expected
        assert_one_of_each_parameter(answer.headers["content-type"])
        assert "ledger_append_duration_seconds_count" in answer.text
