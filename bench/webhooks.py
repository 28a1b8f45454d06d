"""Webhooks: commit -> receiver latency of the `deliver` worker under a steady append rate.

    python -m bench.webhooks [--rate 200] [--seconds 20] [--subscriptions 10]

A private stack (Postgres, the API, one `booking-ledger deliver`), N subscriptions without filters
to one receiver (a threaded HTTP server in this process that notes when each delivery arrived),
and new bookings created through the API at a steady rate (bench.streaming's writer, which notes
when each 201 came back). Latency = arrival at the receiver - the 201 of its append, per
subscription and event (the first arrival; redeliveries are counted apart). Results go to
bench/results/webhooks/latest.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.load import quantile
from bench.stack import Stack
from bench.streaming import _paced
from devstack.harness import LedgerProcess

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "webhooks"
DRAIN_SECONDS = 15.0  # at most, after the last 201, for the last deliveries


class Receiver:
    """Notes (subscription, event id) -> first arrival (time.time()), and how many arrived twice."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], float] = {}
        self.again = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.time()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                subscription = self.headers["Ledger-Subscription"]
                with receiver.lock:
                    for event in json.loads(body):
                        key = (subscription, event["event_id"])
                        if key in receiver.arrived:
                            receiver.again += 1
                        else:
                            receiver.arrived[key] = at

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrived)


def measure(rate: float, seconds: float, subscriptions: int, folder: Path, log=print) -> dict:
    stack = Stack(folder)
    receiver = Receiver()
    try:
        stack.start_postgres()
        url = stack.database("bench_webhooks")
        webhook = {"LEDGER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
        api, api_url = stack.start_bench_api(url, **webhook)
        deliver: LedgerProcess = stack.start("deliver", url, **webhook)
        deliver.wait_for_log("deliver is the leader", timeout=60)
        key = stack.api_key(url, ("read", "write", "subscribe"))
        for _ in range(subscriptions):
            answer = httpx.post(f"{api_url}/v1/subscriptions", json={"url": receiver.url},
                                headers={"Authorization": f"Bearer {key}"}, timeout=10)
            answer.raise_for_status()
        time.sleep(1.0)  # the worker starts a task per subscription (it polls the table twice a second)
        load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        acked = asyncio.run(_paced(api_url, key, rate, seconds))
        expected = len(acked) * subscriptions
        deadline = time.monotonic() + DRAIN_SECONDS
        while receiver.count() < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        with receiver.lock:
            arrived = dict(receiver.arrived)
            again = receiver.again
        lags = [max(0.0, at - acked[event_id]) * 1000 for (_, event_id), at in arrived.items() if event_id in acked]
        result = {
            "rate": rate, "seconds": seconds, "subscriptions": subscriptions, "appends": len(acked),
            "deliveries": len(lags), "missing": expected - len(lags), "redelivered": again,
            "p50_ms": _round(quantile(lags, 0.5)), "p99_ms": _round(quantile(lags, 0.99)),
            "max_ms": _round(max(lags, default=None)), "load_1min_at_start": round(load, 2),
        }
        log(f"  {subscriptions} subscriptions at {rate:.0f} appends/s for {seconds:.0f} s: commit->receiver "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms ({result['deliveries']:,} events delivered, "
            f"{result['missing']} missing, {again} redelivered)")
        return result
    finally:
        receiver.server.shutdown()
        stack.stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def markdown(result: dict) -> str:
    return "\n".join([
        "# Webhooks: commit -> receiver",
        "",
        "`python -m bench.webhooks` (bench/webhooks.py says how). One `deliver` worker, subscriptions without",
        "filters to one local receiver, bookings created through the API at a steady rate; latency from the",
        "append's 201 to the delivery's arrival, per subscription and event.",
        "",
        "| subscriptions | appends/s | seconds | events delivered | missing | redelivered | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['subscriptions']} | {result['rate']:.0f} | {result['seconds']:.0f} | {result['deliveries']} "
        f"| {result['missing']} | {result['redelivered']} | {result['p50_ms']} | {result['p99_ms']} "
        f"| {result['max_ms']} |",
        "",
        f"Load average (1 min) when the appends started: {result.get('load_1min_at_start')} on "
        f"{os.cpu_count()} cores (a shared machine: other work ran beside it).",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--subscriptions", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    try:
        result = measure(args.rate, args.seconds, args.subscriptions, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
