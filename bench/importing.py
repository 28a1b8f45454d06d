"""Import: `booking-ledger import FILE` on a generated history, timed end to end.

    .venv/bin/python -m bench.importing --events 20000      # on a private Postgres of its own

The file is what onboarding brings: several departments' bookings, each created by its first line
and then re-priced, the lines of one booking spread among those of others (a history sorted by
time, not by booking). The command runs as production runs it (the real CLI, the API's role) and
the figure is the file's events divided by the command's wall time, parsing included.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devstack.harness import CLI, as_role

DEPARTMENTS = ("car", "flight", "hotel", "rail")
EVENTS_PER_BOOKING = 5  # on average: one create and four re-pricings
WINDOW = 1000  # bookings whose lines are interleaved with each other


def history_file(path: Path, events: int, seed: int = 15) -> dict[str, int]:
    """Write `events` import lines to `path`: {"events", "bookings", "bytes"}."""
    rng = random.Random(seed)
    start = datetime(2021, 1, 1, tzinfo=UTC)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    written = bookings = 0
    with path.open("w") as out:
        while written < events:
            # A window of bookings, their lines interleaved: round r holds each booking's r-th event.
            window: list[tuple[str, str, int]] = []
            planned = written
            while planned < events and len(window) < WINDOW:
                count = min(rng.randint(1, 2 * EVENTS_PER_BOOKING - 1), events - planned)
                window.append((f"IMP-{run}-{bookings}", rng.choice(DEPARTMENTS), count))
                planned += count
                bookings += 1
            rounds = max(count for _, _, count in window)
            for r in range(rounds):
                for code, department, count in window:
                    if r >= count:
                        continue
                    moment = start + timedelta(minutes=written)
                    line = {"booking_code": code, "department": department, "event_id": str(uuid.UUID(
                                int=rng.getrandbits(128), version=4)),
                            "type": "BookingPriced" if r == 0 else "PriceChanged",
                            "price": {"amount": f"{rng.randint(2000, 90000) / 100:.2f}", "currency": "EUR"},
                            "occurred_at": moment.isoformat().replace("+00:00", "Z")}
                    if r == 0:
                        line["data"] = {"source": "legacy", "channel": rng.choice(("web", "agent", "app"))}
                    out.write(json.dumps(line, separators=(",", ":")) + "\n")
                    written += 1
    return {"events": written, "bookings": bookings, "bytes": path.stat().st_size}


def import_env(database_url: str) -> dict[str, str]:
    """The environment of `booking-ledger import` into `database_url`, as the import's own role."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return as_role({**env, "LEDGER_DATABASE_URL": database_url}, "import")


def run_import(database_url: str, path: Path) -> tuple[float, str]:
    """(seconds, summary text) of `booking-ledger import path`, as the import's own role."""
    started = time.perf_counter()
    done = subprocess.run([CLI, "import", "--quiet", str(path)], env=import_env(database_url),
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return seconds, done.stdout.strip()


def measure(database_url: str, events: int, folder: Path, log=print) -> dict:
    """Import a generated file of `events` events into an empty, migrated database; then once more
    (everything already present)."""
    path = folder / "history.jsonl"
    made = history_file(path, events)
    seconds, summary = run_import(database_url, path)
    expected = f"{made['events']} events imported ({made['bookings']} bookings created)"
    if expected not in summary:
        raise RuntimeError(f"import did not import the whole file: {summary}")
    log(f"  import of {made['events']:,} events ({made['bookings']:,} bookings, {made['bytes'] / 1e6:.1f} MB): "
        f"{seconds:.1f} s, {made['events'] / seconds:,.0f} events/s")
    again, summary = run_import(database_url, path)
    if f"0 events imported (0 bookings created), {made['events']} already present" not in summary:
        raise RuntimeError(f"the re-run imported something: {summary}")
    log(f"  re-run (all present): {again:.1f} s, {made['events'] / again:,.0f} events/s")
    path.unlink()
    return {**made, "seconds": round(seconds, 2), "events_per_s": round(made["events"] / seconds, 1),
            "rerun_seconds": round(again, 2), "rerun_events_per_s": round(made["events"] / again, 1)}


def phase(stack, events: int, log=print) -> dict:
    """On `stack` (bench.stack.Stack, Postgres running): import into a fresh, empty ledger."""
    return measure(stack.database("ledger_import"), events, stack.folder, log)


def markdown(result: dict | None) -> list[str]:
    if not result:
        return []
    return ["", "## Import", "",
            f"- `booking-ledger import` of {result['events']:,} events ({result['bookings']:,} bookings created, "
            f"{result['bytes'] / 1e6:.1f} MB) into an empty ledger: {result['seconds']:.1f} s, "
            f"**{result['events_per_s']:,.0f} events/s**; the same file again (everything already present): "
            f"{result['rerun_seconds']:.1f} s, {result['rerun_events_per_s']:,.0f} events/s"]


def main() -> None:
    from bench.stack import Stack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--database-url", help="an empty, migrated database (default: a private Postgres)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="booking-ledger-import-"))
    folder.chmod(0o755)  # a private Postgres runs as the postgres user when we are root
    if args.database_url:
        print(json.dumps(measure(args.database_url, args.events, folder)))
        return
    stack = Stack(folder / "stack")
    try:
        stack.start_postgres()
        print(json.dumps(measure(stack.database("ledger_import"), args.events, folder)))
    finally:
        stack.stop()
    shutil.rmtree(folder, ignore_errors=True)  # after a run that ended well: a failed one keeps its logs


if __name__ == "__main__":
    main()
