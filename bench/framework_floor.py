"""The floor under the API's own CPU: what granian and Litestar cost a POST that carries an append.

    python -m bench.framework_floor [--rounds 3] [--seconds 5]

Three servers that each decode the append's JSON body and answer 201 with an append's answer,
and do nothing else (no database, no authentication, no log line, no metrics): a one-route
Litestar app on granian's ASGI interface (the API's stack), the same as a bare ASGI callable,
and the same as a bare RSGI callable (granian's own interface). Each runs as the API does
(granian, 2 worker processes, uvloop) and is loaded by wrk with bench/load.lua's appends at 1 and
32 in flight; the server's CPU per request is from /proc (granian's parent and workers). The
medians of the rounds say how much of the API's CPU per append the framework and the server
interface take, and so what leaving them for a hand-written path could save (bench/README.md,
issue 25).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, Response, post

from bench import load
from bench.cpu import process_seconds
from devstack.harness import free_port
from devstack.processes import wait_until

GRANIAN = Path(sys.executable).parent / "granian"
SERVERS = {  # name -> (granian's target, its interface)
    "litestar": ("bench.framework_floor:litestar_app", "asgi"),
    "asgi": ("bench.framework_floor:asgi_app", "asgi"),
    "rsgi": ("bench.framework_floor:rsgi_app", "rsgi"),
}


def _answer(code: str, body: bytes) -> bytes:
    """An append's 201 answer, of its usual size, after decoding the request's JSON body."""
    events = msgspec.json.decode(body)["events"]
    return msgspec.json.encode({"booking_code": code, "version": len(events), "events": [
        {"event_id": str(uuid.uuid4()), "booking_code": code, "version": n + 1, "type": "PriceChanged",
         "price": {"amount": "120.00", "currency": "EUR"}, "data": None, "department": "bench",
         "occurred_at": None, "recorded_at": "2026-12-04T10:00:00.123456Z", "position": 123456789,
         "hash": "ab" * 32} for n in range(len(events))]})


@post("/v1/bookings/{code:str}/events", status_code=201)
async def _append(request: Request, code: str) -> Response[bytes]:
    return Response(_answer(code, await request.body()), media_type="application/json", status_code=201)


litestar_app = Litestar([_append])


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = _answer(scope["path"].split("/")[3], b"".join(chunks))
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


class _Rsgi:
    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        answer = _answer(scope.path.split("/")[3], await protocol())
        protocol.response_bytes(201, [("content-type", "application/json")], answer)


rsgi_app = _Rsgi()


def measure(name: str, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, server CPU ms per request) of one run against a fresh server."""
    target, interface = SERVERS[name]
    port = free_port()
    server = subprocess.Popen([str(GRANIAN), "--interface", interface, "--workers", "2", "--loop", "uvloop",
                               "--port", str(port), "--log-level", "warning", target],
                              cwd=Path(__file__).resolve().parent.parent, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:  # a POST proves the route
            try:
                answer = httpx.post(f"{url}/v1/bookings/X/events", content=b'{"events": [{}]}', timeout=1)
                return answer.status_code == 201
            except httpx.HTTPError:
                return False

        wait_until(answers, 30, 0.2, f"{name} to answer")
        load.api_appends(url, "none", concurrency, 1, 1000)  # warm-up: both workers are up after it
        pids = [server.pid, *map(int, Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split())]
        before = process_seconds(pids)
        sample = load.api_appends(url, "none", concurrency, seconds, 1000)
        cpu = process_seconds(pids) - before
        if sample.errors:
            raise RuntimeError(f"{name}: {sample.errors} answers other than 2xx")
        return sample.rate, sample.p50_ms, cpu * 1000 / sample.requests
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per readiness probe
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for n in range(args.rounds):
        for name in [*SERVERS][n % len(SERVERS):] + [*SERVERS][:n % len(SERVERS)]:
            for concurrency in (1, 32):
                run = measure(name, concurrency, args.seconds)
                runs.setdefault((name, concurrency), []).append(run)
                print(f"round {n + 1} {name:>9} {concurrency:>3} in flight: {run[0]:7.0f}/s, p50 {run[1]:.2f} ms, "
                      f"server CPU {run[2]:.3f} ms a request", flush=True)
    print(f"\n{'server':>9} {'in flight':>9} {'requests/s':>11} {'p50 ms':>7} {'CPU ms/request':>15}  (medians)")
    for (name, concurrency), found in runs.items():
        rate, p50, cpu = (statistics.median(run[i] for run in found) for i in range(3))
        print(f"{name:>9} {concurrency:>9} {rate:11.0f} {p50:7.2f} {cpu:15.3f}")


if __name__ == "__main__":
    main()
