"""Scratch folders for the suite's servers and logs, under one folder per `pytest` run.

The run's folder (BASE/run-<random>) is made by the pytest process that runs the session
(pytest-xdist's controller, or pytest alone) and named to its workers in SCRATCH_ENV. It is removed
when the run passes, and kept when it fails, for a post-mortem: the next run removes all but the
newest KEPT of those. A run holds a lock on its folder while it lasts, so two runs on one machine
never remove each other's. Outside a pytest run (`python -m tests.soak.soak`) a folder is made in the
system's temporary directory, as before, and kept.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

SCRATCH_ENV = "BOOKING_LEDGER_TEST_SCRATCH"
BASE = Path(tempfile.gettempdir()) / "booking-ledger-tests"
KEPT = 3  # failed runs' folders kept
LOCK = ".in-use"


def folder(prefix: str, keep: bool = False) -> Path:
    """A new folder in this run's, readable by the postgres user (the suite's clusters may run as it
    when the suite runs as root). `keep`: in the system's temporary directory instead, kept after the run."""
    run = None if keep else os.environ.get(SCRATCH_ENV)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=run if run and Path(run).is_dir() else None))
    path.chmod(0o755)
    return path


class Run:
    """This run's scratch folder: made, locked and named to the workers by `begin`, removed by `end`."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._lock: IO[bytes] | None = None

    def begin(self) -> Path:
        BASE.mkdir(exist_ok=True)
        BASE.chmod(0o1777)  # any user's runs, as /tmp itself
        _prune()
        # Short: a Postgres socket path must fit in 107 bytes, and a Patroni node's lies four folders down.
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=BASE))
        self.path.chmod(0o755)
        self._lock = (self.path / LOCK).open("wb")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        os.environ[SCRATCH_ENV] = str(self.path)
        return self.path

    def end(self, passed: bool) -> None:
        if self.path is None or self._lock is None:
            return
        if passed:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()  # releases the lock: a failed run's folder may now be pruned
        os.environ.pop(SCRATCH_ENV, None)


def _prune() -> None:
    """Remove the folders of earlier runs but the newest KEPT, skipping any run still under way."""
    done = [path for path in BASE.iterdir() if path.is_dir() and not _in_use(path)]
    done.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    for path in done[KEPT:]:
        shutil.rmtree(path, ignore_errors=True)


def _in_use(path: Path) -> bool:
    try:
        with (path / LOCK).open("rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False
