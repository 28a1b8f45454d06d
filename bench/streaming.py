"""The live feed: commit -> client latency of `GET /v1/events/stream` under a steady append rate.

    python -m bench.streaming readers --url URL --keys K1,K2 --streams 50 --out F   (stops on a line on stdin)

N streams are held open by a reader process of their own (plain sockets, no JSON decoding: each
message's event id is found by its place in the line), several API keys sharing them as several
consuming teams would (the API caps streams per key). Meanwhile new bookings are created through
the API at a steady rate, each with an event id chosen by the writer, which notes when its 201
came back. Latency = the time a stream received the event - the time its append's 201 came back.

The commit time is taken from the 201 rather than from the event's `recorded_at`: `recorded_at` is
read inside the append function once its locks are held, before its writes and before the commit
waited for its WAL flush, so it would count the commit itself (several milliseconds on this disk)
as delivery. The 201 leaves the API just after the commit; the stream's wake-up is sent at the same
moment, so a delivery can beat the 201 by a little (those count as 0 ms). Both are reported;
`from_recorded_at` is the upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import at_rate, quantile

HERE = Path(__file__).resolve().parent
DRAIN_SECONDS = 1.0  # after the last 201, before the streams are closed
KEYS = 5  # API keys the streams are spread over (the API's cap is 10 streams per key per worker)
EVENT_ID = b'"event_id":"'
RECORDED_AT = b'"recorded_at":"'


# -- the reader process ------------------------------------------------------------------------
async def _stream(url: str, key: str, received: dict[str, list[float]], recorded: dict[str, float],
                  ready: asyncio.Event, stop: asyncio.Event) -> None:
    """One stream: each event's receipt time into `received[event id]`, its recorded_at into `recorded`."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET /v1/events/stream?after=0 HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                 f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"stream refused: {head.splitlines()[0].decode()}")
    ready.set()
    buffer = b""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            read = asyncio.ensure_future(reader.read(65536))
            done, _ = await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                return
            chunk = read.result()
            if not chunk:
                return
            now = time.time()
            buffer += chunk
            # Chunked transfer framing and SSE framing both end in lines: find the ids in what came.
            while (at := buffer.find(EVENT_ID)) >= 0:
                end = at + len(EVENT_ID)
                if len(buffer) < end + 36:
                    break
                event_id = buffer[end:end + 36].decode()
                when = buffer.find(RECORDED_AT, end)
                if when < 0 or len(buffer) < when + len(RECORDED_AT) + 40:
                    break
                stamp = buffer[when + len(RECORDED_AT):buffer.index(b'"', when + len(RECORDED_AT))].decode()
                received.setdefault(event_id, []).append(now)
                if event_id not in recorded:
                    recorded[event_id] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                buffer = buffer[when:]
            if len(buffer) > 1 << 20:
                buffer = buffer[-65536:]
    finally:
        stopping.cancel()
        writer.close()


async def _readers(url: str, keys: list[str], streams: int, out: Path) -> None:
    """Open the streams, say "ready", read until a line comes on stdin, write what was seen to `out`."""
    received: dict[str, list[float]] = {}
    recorded: dict[str, float] = {}
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(streams)]
    tasks = [asyncio.create_task(_stream(url, keys[n % len(keys)], received, recorded, readies[n], stop))
             for n in range(streams)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    out.write_text(json.dumps({"received": received, "recorded_at": recorded, "errors": errors}))


# -- the writer ----------------------------------------------------------------------------------
async def _paced(url: str, key: str, rate: float, seconds: float) -> dict[str, float]:
    """Create bookings at `rate` per second; {event id: when its 201 came back} (time.time())."""
    import aiohttp

    acked: dict[str, float] = {}
    failed = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(url, headers=headers, connector=aiohttp.TCPConnector(limit=64),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> None:
            nonlocal failed
            event_id = str(uuid.uuid4())
            body = {"expected_version": 0, "events": [{"event_id": event_id, "type": "BookingPriced",
                                                       "price": {"amount": "80.00", "currency": "EUR"}}]}
            try:
                async with session.post(f"/v1/bookings/STREAM-{event_id[:18]}/events", json=body) as response:
                    await response.read()
                    if response.status == 201:
                        acked[event_id] = time.time()
                    else:
                        failed += 1
            except (TimeoutError, aiohttp.ClientError):
                failed += 1

        sent, _ = await at_rate(rate, seconds, one)
    if failed:
        raise RuntimeError(f"{failed} of {sent} appends failed")
    return acked


def measure(api_url: str, keys: list[str], write_key: str, streams: int, rate: float, seconds: float,
            folder: Path, log=print) -> dict:
    out = folder / "stream-readers.json"
    readers = subprocess.Popen(
        [sys.executable, "-m", "bench.streaming", "readers", "--url", api_url, "--keys", ",".join(keys),
         "--streams", str(streams), "--out", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)
    assert readers.stdout is not None
    if readers.stdout.readline().strip() != "ready":
        readers.kill()
        raise RuntimeError(f"the stream readers did not start: {readers.communicate()[1][-2000:]}")
    try:
        acked = asyncio.run(_paced(api_url, write_key, rate, seconds))
        time.sleep(DRAIN_SECONDS)  # the last events on their way
    finally:
        _, err = readers.communicate("stop\n", timeout=120)
    if readers.returncode != 0:
        raise RuntimeError(f"the stream readers failed: {err[-2000:]}")
    found = json.loads(out.read_text())
    received: dict[str, list[float]] = found["received"]
    lags = [max(0.0, at - acked[event_id]) * 1000 for event_id, ats in received.items() if event_id in acked
            for at in ats]
    from_recorded = [(at - found["recorded_at"][event_id]) * 1000 for event_id, ats in received.items()
                     if event_id in acked for at in ats]
    expected = len(acked) * streams
    result = {
        "streams": streams, "rate": rate, "seconds": seconds, "appends": len(acked),
        "deliveries": len(lags), "missing": expected - len(lags), "reader_errors": found["errors"],
        "p50_ms": _round(quantile(lags, 0.5)), "p99_ms": _round(quantile(lags, 0.99)),
        "max_ms": _round(max(lags, default=None)),
        "before_the_201": round(sum(1 for e, ats in received.items() if e in acked for a in ats if a < acked[e])
                                / max(1, len(lags)), 4),
        "from_recorded_at": {"p50_ms": _round(quantile(from_recorded, 0.5)),
                             "p99_ms": _round(quantile(from_recorded, 0.99))},
    }
    log(f"  {streams} streams at {rate:.0f} appends/s for {seconds:.0f} s: commit->client p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms ({result['deliveries']:,} deliveries, {result['missing']} missing; "
        f"from recorded_at p50 {result['from_recorded_at']['p50_ms']} ms)")
    return result


def phase(stack, streams: int, rate: float, seconds: float, log=print) -> dict:
    """On `stack` (bench.stack.Stack, Postgres running): a fresh ledger, the API (2 workers), the run."""
    url = stack.database("ledger_stream")
    keys = [stack.api_key(url, ("read",)) for _ in range(KEYS)]
    write_key = stack.api_key(url, ("read", "write"))
    api, api_url = stack.start_bench_api(url)
    try:
        return measure(api_url, keys, write_key, streams, rate, seconds, stack.folder, log)
    finally:
        api.stop()


def markdown(result: dict | None) -> list[str]:
    if not result:
        return []
    recorded = result["from_recorded_at"]
    return ["", "## Live stream", "",
            f"- {result['streams']} open `GET /v1/events/stream` streams, appends at {result['rate']:.0f}/s for "
            f"{result['seconds']:.0f} s ({result['appends']:,} appends, {result['deliveries']:,} deliveries, "
            f"{result['missing']} missing): commit (the append's 201) → client p50 **{result['p50_ms']} ms**, "
            f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; from the event's recorded_at (read "
            f"before the writes, so the commit's own time included) p50 {recorded['p50_ms']} ms, "
            f"p99 {recorded['p99_ms']} ms"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["readers"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_readers(args.url, args.keys.split(","), args.streams, args.out))


if __name__ == "__main__":
    main()
