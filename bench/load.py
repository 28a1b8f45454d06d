"""Load generators, each in its own process: wrk for the API, bench.drivers for the baselines,
and a paced creator of bookings for the end-to-end lag.

    BENCH_API_KEY=... python -m bench.load paced --url URL --rate 200 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CREATE_EVERY = 4  # one request in four creates a booking; the rest change an existing one's price


@dataclass(frozen=True)
class Sample:
    """One closed-loop run: throughput and latency, as wrk and bench.drivers print them."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @classmethod
    def parse(cls, output: str) -> Sample:
        data = json.loads(output.strip().splitlines()[-1])
        return cls(data["requests"], data["duration_us"] / 1e6, data["non_2xx"] + data["socket_errors"],
                   data["p50_us"] / 1e3, data["p99_us"] / 1e3)


PERSONAL = ("none", "every", "creates")  # which appends carry data.personal (bench/load.lua)


def wrk(url: str, key: str, concurrency: int, seconds: float, *args: object, personal: str = "none") -> Sample:
    """wrk running bench/load.lua; `personal`: which appends carry data.personal (PERSONAL)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make install` (scripts/system-deps.sh)")
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(HERE / "load.lua"), url, "--", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "BENCH_API_KEY": key, "BENCH_PERSONAL": personal})
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()}")
    return Sample.parse(done.stdout)


def api_appends(url: str, key: str, concurrency: int, seconds: float, bookings: int,
                personal: str = "none") -> Sample:
    return wrk(url, key, concurrency, seconds, "append", bookings, CREATE_EVERY, uuid.uuid4().hex[:8],
               personal=personal)


def api_reads(url: str, key: str, path: str, concurrency: int, seconds: float) -> Sample:
    return wrk(url, key, concurrency, seconds, "get", path)


def driver(name: str, url: str, concurrency: int, seconds: float, bookings: int) -> Sample:
    command = [sys.executable, "-m", "bench.drivers", name, "--url", url, "--concurrency", str(concurrency),
               "--seconds", str(seconds), "--bookings", str(bookings), "--create-every", str(CREATE_EVERY)]
    return _run_driver(command, seconds)


def _run_driver(command: list[str], seconds: float) -> Sample:
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, cwd=HERE.parent)
    if done.returncode != 0:
        raise RuntimeError(f"bench.drivers {command[3]} failed: {done.stderr.strip()[-2000:]}")
    return Sample.parse(done.stdout)


def json_reads(url: str, query: str, arguments: list[object], concurrency: int, seconds: float) -> Sample:
    """bench.drivers json_read: `query`'s JSON text passed through, closed loop."""
    command = [sys.executable, "-m", "bench.drivers", "json_read", "--url", url, "--concurrency", str(concurrency),
               "--seconds", str(seconds), "--query", query, *[f"--arg={a}" for a in arguments]]
    return _run_driver(command, seconds)


def paced(url: str, key: str, rate: float, seconds: float) -> subprocess.Popen:
    """Start creating bookings at a steady rate in another process; returns it (prints a summary)."""
    command = [sys.executable, "-m", "bench.load", "paced",
               "--url", url, "--rate", str(rate), "--seconds", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent,
                            env={**os.environ, "BENCH_API_KEY": key})


def quantile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` quantile of `values` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def at_rate(rate: float, seconds: float, one: Callable[[], Awaitable[None]]) -> tuple[int, float]:
    """Start `one()` `rate` times a second for `seconds` (open loop: a slow answer does not delay the
    next start) and wait for them all: (how many started, the most seconds a start fell behind)."""
    tasks = []
    behind = 0.0
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind = max(behind, -delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return len(tasks), behind


async def _paced(url: str, key: str, rate: float, seconds: float) -> dict[str, float]:
    import aiohttp

    body = {"expected_version": 0,
            "events": [{"type": "BookingPriced", "price": {"amount": "80.00", "currency": "EUR"}}]}
    headers = {"Authorization": f"Bearer {key}"}
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> None:
            code = f"E2E-{uuid.uuid4().hex[:20]}"
            try:
                async with session.post(f"/v1/bookings/{code}/events", json=body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
            except (TimeoutError, aiohttp.ClientError):
                statuses[0] = statuses.get(0, 0) + 1

        start = time.monotonic()
        sent, behind = await at_rate(rate, seconds, one)
        elapsed = time.monotonic() - start
    return {"sent": sent, "seconds": elapsed, "created": statuses.get(201, 0),
            "failed": sum(v for k, v in statuses.items() if k != 201), "max_behind_s": behind}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["paced"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_paced(args.url, os.environ["BENCH_API_KEY"], args.rate, args.seconds))))


if __name__ == "__main__":
    main()
