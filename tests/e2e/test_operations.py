"""What operators get from the API processes: a /metrics answer that strict scrapers accept, and log
lines that are one record each and safe to show on a terminal."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from devstack.harness import as_role
from devstack.processes import wait_until
from tests.conftest import free_port
from tests.e2e.conftest import CLI

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


def test_metrics_tell_that_every_worker_listens_for_key_changes(api: str) -> None:
    # The lowest value over the live workers: 1 only once each of the two has its LISTEN in place.
    def listening() -> bool:
        text = httpx.get(f"{api}/metrics", timeout=10).text
        return re.search(r"^ledger_key_listener_up 1\.0$", text, re.M) is not None

    wait_until(listening, timeout=30, interval=0.2, what="ledger_key_listener_up 1")


GRANIAN_LINE = re.compile(r"\[(INFO|WARNING|ERROR)\] ")
CONSOLE_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[(debug|info|warning|error|critical) *\] ")


@dataclass
class PipedApi:
    """`booking-ledger api` with stdout and stderr on one pipe, as under make run's supervisor."""

    url: str
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def piped_api(database_url: str) -> Iterator[PipedApi]:
    port = free_port()
    env = as_role({**os.environ, "LEDGER_DATABASE_URL": database_url, "LEDGER_HTTP_PORT": str(port),
                   "LEDGER_HTTP_WORKERS": "2", "LEDGER_LOG_FORMAT": "console", "LEDGER_RATE_LIMIT": "0"}, "api")
    process = subprocess.Popen([CLI, "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    api = PipedApi(f"http://127.0.0.1:{port}", process)
    reader = threading.Thread(target=api.read, daemon=True)
    reader.start()

    def ready() -> bool:
        try:
            return httpx.get(api.url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None  # exited: the assert below says so

    try:
        wait_until(ready, 30, what="the API to be ready")
        assert process.poll() is None, "\n".join(api.lines)
        yield api
    finally:
        api.stop()
        reader.join(10)


def test_two_workers_under_load_write_whole_escaped_lines_to_one_pipe(piped_api: PipedApi) -> None:
    paths = ["/health/live", "/v1/bookings/%1B%5B2J%00%7F%E2%80%AEx/events", "/v1/bookings/%1B%5D0%3Bowned%07"]
    total = 3000
    wait_until(lambda: sum(" request " in line for line in piped_api.lines) >= 1, 10, what="the readiness probe's line")
    before = len(piped_api.lines)

    async def load() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=piped_api.url, timeout=30, limits=limits) as client:
            queue = iter(range(total))

            async def one_client() -> None:
                for n in queue:
                    await client.get(paths[n % len(paths)])

            await asyncio.gather(*(one_client() for _ in range(64)))

    asyncio.run(load())

    def logged() -> list[str]:
        lines = piped_api.lines[before:]
        return lines if sum(line.count("[booking_ledger.request]") for line in lines) >= total else []

    lines = wait_until(logged, 60, what=f"{total} request records")
    # granian's own lines ("[INFO] Started worker-2", late on a busy machine) are the HTTP server's,
    # not records of ours; a line of granian's with a record of ours in it still counts as merged.
    lines = [line for line in lines if not (GRANIAN_LINE.match(line) and not CONSOLE_LINE.findall(line))]
    merged = [line for line in lines if len(CONSOLE_LINE.findall(line)) != 1 or not CONSOLE_LINE.match(line)]
    assert merged == [], f"{len(merged)} of {len(lines)} lines are not one record each, e.g. {merged[:3]}"
    requests = [line for line in lines if " request " in line]
    assert len(requests) == total
    assert not [line for line in lines if any(char in line for char in "\x1b\x00\x07\x7f\u202e")]
    assert sum("path=/v1/bookings/\\x1b[2J\\x00\\x7f\\u202ex/events " in line for line in requests) == total // 3
    assert sum("path=/v1/bookings/\\x1b]0;owned\\x07 " in line for line in requests) == total // 3
