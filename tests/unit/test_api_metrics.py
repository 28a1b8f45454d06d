"""The API's /metrics with several workers: a worker that exited is not counted in live gauges."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from service.api import metrics


def test_the_live_gauges_of_an_exited_worker_are_forgotten(tmp_path: Path) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    for pid in (exited.pid, os.getpid()):
        for mode in ("livemin", "livesum"):
            (tmp_path / f"gauge_{mode}_{pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{exited.pid}.db").write_bytes(b"")  # what it counted still counts
    metrics.forget_dead_workers(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{exited.pid}.db", f"gauge_livemin_{os.getpid()}.db", f"gauge_livesum_{os.getpid()}.db"])
