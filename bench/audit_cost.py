"""`make bench`'s audit part (issue 29): what the hash chain and sealed personal data cost an append.

Appends over HTTP at 32 in flight by two APIs side by side: this checkout's, and the code before the
hash chain and the sealing (BEFORE, exported with `git archive` into the bench's folder), each on a
database its own migrations made and filled alike (the older code stores personal data as plain
data). Two mixes (bench/load.lua), one in four appends creating a booking: a made-up traveller under
`data.personal` in every append (the worst case), and in the creating appends only (a booking's
traveller given once, its price changes without one). The APIs alternate round by round, each run
next to the raw append loop on this checkout's schema (bench.experiment's method). Headline per mix:
head's appends/s over the older code's, by the medians of appends/s and by the medians of each run's
ratio to the raw loop run right after it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench import experiment
from bench.fill import fill
from bench.stack import Stack

BEFORE = "0d705c6"  # the last commit at schema 0015: no hash chain, no sealing
CONCURRENCY = 32
MIXES = ("every", "creates")  # which appends carry data.personal


def export(commit: str, into: Path) -> Path:
    """The code of `commit`, as files in `into` (from this checkout's git history)."""
    into.mkdir(parents=True)
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(stack: Stack, rounds: int, seconds: float, log) -> dict:
    before = str(export(BEFORE, stack.folder / "code-0015"))
    url = stack.database("ledger_audit")
    fill(url, "BENCH-", experiment.BOOKINGS)
    apis = experiment.start_variants(stack, url, [("0015", {"PYTHONPATH": before, "schema": before}), ("head", {})],
                                     prefix="ledger_audit", personal="every")
    results: dict = {"before": BEFORE}
    try:
        for mix in MIXES:
            runs = experiment.alternate(stack, url, apis, [CONCURRENCY], rounds, seconds, personal=mix, echo=log)
            results[mix] = _compared({name: runs[(name, CONCURRENCY)].summary() for name in ("0015", "head")})
    finally:
        for api, _, _ in apis.values():
            api.stop()
    failed = {(mix, name): results[mix][name]["errors"] for mix in MIXES for name in ("0015", "head")
              if results[mix][name]["errors"]}
    if failed:
        raise RuntimeError(f"appends answered other than 2xx: {failed} (the APIs' logs are in {stack.folder})")
    return results


def _compared(by_code: dict[str, dict]) -> dict:
    head, older = by_code["head"], by_code["0015"]
    return {**by_code, "head_vs_0015": round(head["appends_per_s"] / older["appends_per_s"], 3),
            "head_vs_0015_by_raw": round(head["api_vs_raw"] / older["api_vs_raw"], 3)}
