"""Where an API worker's time goes under load: py-spy samples of the workers while wrk appends (or reads).

    python -m bench.profiling --concurrency 1 --seconds 10 [--get /v1/bookings/BENCH-1] [--top 30]

Starts a private Postgres and the API (as `make bench` does, 2 workers), loads it with wrk and
samples every worker with py-spy (threads at work only: a wait for Postgres or the network is not
a sample), then prints, per function, the share of samples where it is on the stack ("total") and at
its top ("own"), and the CPU Postgres and the workers used per request (from /proc). The folded
stacks are kept (`--out`) for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import load
from bench.cpu import postgres_seconds, process_seconds
from bench.fill import fill
from bench.run import BOOKINGS
from bench.stack import Stack

SPY = Path(sys.executable).parent / "py-spy"  # the environment running this, as granian is found


def record(pid: int, seconds: float, out: Path, rate: int, native: bool) -> subprocess.Popen:
    return subprocess.Popen([str(SPY), "record", "--pid", str(pid), "--duration", str(round(seconds)),
                             "--rate", str(rate), "--format", "raw", "--output", str(out),
                             *(["--native"] if native else ["--nonblocking", "--gil"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def frame_name(frame: str) -> str:
    """`function (path/to/module.py:line)` → `function (module.py)`: one line per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def summarize(folded: list[Path], top: int, hide: tuple[str, ...]) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for path in folded:
        for line in path.read_text(errors="replace").splitlines():  # a frame may name non-UTF-8 bytes
            stack, _, count = line.rpartition(" ")
            frames = [frame_name(f) for f in stack.split(";")[1:]]  # the first is the thread
            n = int(count)
            samples += n
            if frames:
                own[frames[-1]] += n
            for name in set(frames):
                total[name] += n
    lines = [f"{samples} samples", f"{'own %':>6} {'total %':>8}  function"]
    for name, n in total.most_common():
        if any(word in name for word in hide):
            continue
        lines.append(f"{100 * own[name] / samples:6.1f} {100 * n / samples:8.1f}  {name}")
        if len(lines) >= top + 2:
            break
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--get", help="profile GETs of this path instead of appends")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--personal", choices=load.PERSONAL, default="none", help="which appends carry data.personal")
    parser.add_argument("--native", action="store_true", help="native frames too (granian, asyncpg, msgspec)")
    parser.add_argument("--hide", nargs="*", default=["<module>", "run (runners.py)", "run_forever", "_run_once"])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="booking-ledger-profile-")))
    args = parser.parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="booking-ledger-profiling-")))
    try:
        stack.start_postgres()
        url = stack.database("ledger_profile")
        fill(url, "BENCH-", BOOKINGS)
        key = stack.api_key(url)
        api, api_url = stack.start_bench_api(url)
        load.api_appends(api_url, key, 8, 2, BOOKINGS, personal=args.personal)  # warm-up
        workers = api.pids()[1:]
        spies = [record(pid, args.seconds + 1, args.out / f"worker-{pid}.folded", args.rate,
                        args.native) for pid in workers]
        result: list[load.Sample] = []
        pg0, own0 = postgres_seconds(stack.postgres.data_dir), process_seconds(workers)

        def run() -> None:
            if args.get:
                result.append(load.api_reads(api_url, key, args.get, args.concurrency, args.seconds))
            else:
                result.append(load.api_appends(api_url, key, args.concurrency, args.seconds, BOOKINGS,
                                               personal=args.personal))

        loader = threading.Thread(target=run)
        loader.start()
        loader.join()
        pg1, own1 = postgres_seconds(stack.postgres.data_dir), process_seconds(workers)
        for spy in spies:
            spy.wait(timeout=60)
        [sample] = result
        per = 1000 / max(1, sample.requests)
        print(f"{sample.rate:.0f} requests/s at {args.concurrency} in flight (p50 {sample.p50_ms:.2f} ms, "
              f"p99 {sample.p99_ms:.2f} ms, {sample.errors} errors); CPU per request: Postgres "
              f"{(pg1 - pg0) * per:.3f} ms, API workers {(own1 - own0) * per:.3f} ms")
        print(summarize(sorted(args.out.glob("*.folded")), args.top, tuple(args.hide)))
        print(f"folded stacks: {args.out}")
    finally:
        stack.stop()
    stack.remove()  # only after a run that ended well: a failed one keeps its logs


if __name__ == "__main__":
    main()
