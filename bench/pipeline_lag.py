"""Commit-to-DynamoDB lag through the running stack (`make run`).

    .venv/bin/python -m bench.pipeline_lag --key KEY --rate 200 --seconds 5

Creates bookings through the API at a steady rate; a poller looks each one up in DynamoDB
(BatchGetItem every 50 ms) and records when it first appears. Lag = first seen - 201 received,
so it includes up to ~50 ms of polling granularity.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid

import httpx

from core import dynamodb
from core.settings import get_settings


def poll(acked: dict[str, float], seen: dict[str, float], done: threading.Event) -> None:
    settings = get_settings().dynamo
    client = dynamodb.client(settings)
    while not done.is_set() or len(seen) < len(acked):
        waiting = [code for code in list(acked) if code not in seen][:100]
        for start in range(0, len(waiting), 100):
            keys = [{"booking_code": {"S": c}, "version": {"N": "1"}} for c in waiting[start : start + 100]]
            answer = client.batch_get_item(RequestItems={settings.table: {"Keys": keys, "ConsistentRead": True}})
            now = time.monotonic()
            for item in answer["Responses"].get(settings.table, []):
                seen.setdefault(item["booking_code"]["S"], now)
        time.sleep(0.05)
        if done.is_set() and time.monotonic() > done.deadline:  # type: ignore[attr-defined]
            return


async def load(url: str, key: str, rate: float, seconds: float, acked: dict[str, float]) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

        async def one() -> None:
            code = f"LAG-{uuid.uuid4().hex[:16]}"
            price = {"amount": "1.00", "currency": "EUR"}
            response = await client.post(f"/v1/bookings/{code}/events", json={
                "expected_version": 0, "events": [{"type": "BookingPriced", "price": price}]})
            response.raise_for_status()
            acked[code] = time.monotonic()

        tasks, start = [], time.monotonic()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()
    poller = threading.Thread(target=poll, args=(acked, seen, done))
    poller.start()
    started = time.monotonic()
    asyncio.run(load(args.url, args.key, args.rate, args.seconds, acked))
    done.deadline = time.monotonic() + 120  # type: ignore[attr-defined]
    done.set()
    poller.join()
    lags = sorted(seen[c] - acked[c] for c in acked if c in seen)
    print(f"appends={len(acked)} in {time.monotonic() - started:.1f}s, replicated={len(lags)}, "
          f"lag p50={statistics.median(lags) * 1000:.0f} ms p99={lags[int(len(lags) * 0.99) - 1] * 1000:.0f} ms "
          f"max={lags[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
