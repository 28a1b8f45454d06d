"""Verify at scale: `booking-ledger replay`, a full `verify` and an incremental one, timed end to end.

    .venv/bin/python -m bench.verifying --events 200000     # a private Postgres and DynamoDB Local
    .venv/bin/python -m bench.verifying --events 200000 --out bench/results/verify

The ledger is filled through the import path (bench/importing.py's file: 4 departments, bookings
of 1-9 events), DynamoDB Local is filled by `replay`, then `verify` runs over all of it (the
batched, parallel full run: BatchGetItem per page of events, a parallel Scan for extra items),
then a tenth more events arrive (imported, replayed from where the first replay ended) and
`verify --checkpoint FILE` checks only those (the checkpoint the full run wrote). Every command is
the real CLI as production runs it (its own role, its own process); the figure is events divided
by the command's wall time, start-up included; the peak RSS is the command's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.importing import history_file, run_import
from devstack.harness import CLI, as_role, free_port, run_sql
from devstack.processes import DynamoDBLocal

TARGET_EVENTS_PER_S = 20_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(env: dict[str, str], command: str, *args: str) -> tuple[float, float, str, float]:
    """(seconds, peak RSS in MB, stdout, CPU seconds) of `booking-ledger command args`, as the command's role."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen([CLI, command, *args], env=as_role(env, command), stdout=out, stderr=err,
                                   text=True)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage, its peak RSS included
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed ({process.returncode}): {text[-2000:]} {errors[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, text.strip(), usage.ru_utime + usage.ru_stime


def measure(env: dict[str, str], database_url: str, dynamodb_pid: int, events: int, folder: Path,
            log=print) -> dict:
    def timed(label: str, count: int, command: str, *args: str) -> dict:
        before = cpu_seconds(dynamodb_pid)
        seconds, peak, out, cpu = run_cli(env, command, *args)
        server = cpu_seconds(dynamodb_pid) - before
        figures = {"events": count, "seconds": round(seconds, 2), "events_per_s": round(count / seconds, 1),
                   "load_average": round(os.getloadavg()[0], 1),  # the machine is shared: how busy it was
                   "peak_rss_mb": round(peak, 1), "client_cpu_us_per_event": round(cpu / count * 1e6, 1),
                   "dynamodb_cpu_us_per_event": round(server / count * 1e6, 1)}
        log(f"  {label}: {count:,} events, {seconds:.1f} s, {count / seconds:,.0f} events/s, peak RSS {peak:.0f} MB, "
            f"CPU per event: command {figures['client_cpu_us_per_event']} us, DynamoDB Local "
            f"{figures['dynamodb_cpu_us_per_event']} us | {out.splitlines()[-1]}")
        return figures

    path = folder / "history.jsonl"
    made = history_file(path, events)
    seconds, _ = run_import(database_url, path)
    log(f"  import of {made['events']:,} events: {seconds:.1f} s")
    replay = timed("replay", made["events"], "replay", "--quiet")
    run_sql(database_url, "DELETE FROM outbox")  # as a relay would have left it: nothing on its way
    checkpoint = folder / "verify-checkpoint.json"
    full = timed("full verify", made["events"], "verify", "--grace", "0", "--checkpoint", str(checkpoint))
    checked_through = json.loads(checkpoint.read_text())["checked_through"]
    more = history_file(path, events // 10, seed=16)
    run_import(database_url, path)
    run_cli(env, "replay", "--quiet", "--after", str(checked_through))
    run_sql(database_url, "DELETE FROM outbox")
    incremental = timed("incremental verify", more["events"], "verify", "--grace", "0", "--checkpoint",
                        str(checkpoint))
    path.unlink()
    return {"events": made["events"], "bookings": made["bookings"], "replay": replay, "full": full,
            "incremental": incremental}


def markdown(result: dict, when: str) -> list[str]:
    rows = [("`replay`", result["replay"], "≥ 10,000"),
            ("`verify` (full: parallel Scan, ledger looked up per page)", result["full"], f"≥ {TARGET_EVENTS_PER_S:,}"),
            ("`verify --checkpoint` (the new events only: BatchGetItem per page)", result["incremental"],
             f"≥ {TARGET_EVENTS_PER_S:,}")]
    lines = [
        "# Verify and replay at scale", "",
        f"Run of {when} on this 2-CPU machine (shared), `python -m bench.verifying --events {result['events']}`: "
        f"a ledger of {result['events']:,} events ({result['bookings']:,} bookings) filled by `import`, DynamoDB "
        "Local (in memory) filled by `replay`, then a tenth more events imported and replayed. Each rate is "
        "events over the command's wall time, start-up included; CPU per event is the command's own and "
        "DynamoDB Local's (Postgres not counted).", "",
        "| command | events | seconds | events/s | peak RSS (MB) | CPU µs/event: command | DynamoDB Local | "
        "load average | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures, target in rows:
        lines.append(f"| {name} | {figures['events']:,} | {figures['seconds']:.1f} | {figures['events_per_s']:,.0f} | "
                     f"{figures['peak_rss_mb']:.0f} | {figures['client_cpu_us_per_event']} | "
                     f"{figures['dynamodb_cpu_us_per_event']} | {figures.get('load_average', '')} | {target} |")
    return lines


def main() -> None:
    from bench.stack import Stack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path, help="write latest.json and latest.md here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="booking-ledger-verify-"))
    folder.chmod(0o755)  # a private Postgres runs as the postgres user when we are root
    stack = Stack(folder / "stack")
    try:
        stack.start_postgres()
        stack.dynamodb = DynamoDBLocal(free_port(), log_file=stack.folder / "dynamodb.log")
        stack.dynamodb.start()
        url = stack.database("ledger_verify")
        result = measure(stack.env(url), url, stack.dynamodb.process.pid, args.events, folder)
        print(json.dumps(result))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            when = datetime.now(UTC).isoformat(timespec="seconds")
            (args.out / "latest.json").write_text(json.dumps({"when": when, **result}, indent=2) + "\n")
            (args.out / "latest.md").write_text("\n".join(markdown(result, when)) + "\n")
    finally:
        stack.stop()
    # After a run that ended well (about 2 GB at 1,000,000 events); a failed one keeps its logs.
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
