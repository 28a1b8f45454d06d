"""CPU time of processes, from /proc: what Postgres and the API spend per append."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> tuple[float, float]:
    """(own utime + stime, reaped children's cutime + cstime) of `pid`, in seconds; (0, 0) once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # fields[0] is the state (field 3 of proc(5)): utime, stime, cutime, cstime are fields 14-17.
    return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_seconds(pids: list[int]) -> float:
    """CPU seconds the processes used so far (all their threads)."""
    return sum(_times(pid)[0] for pid in pids)


def postgres_seconds(data_dir: Path) -> float:
    """CPU seconds of a Postgres cluster so far: the postmaster, its live children and the ones it reaped."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    own, reaped = _times(postmaster)
    return own + reaped + sum(_times(child)[0] for child in _children(postmaster))
