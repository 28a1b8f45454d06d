"""The 60-second chaos soak, as `make soak DURATION=60s` runs it (with a fixed seed)."""

from __future__ import annotations

import subprocess
import sys


def test_sixty_second_chaos_soak_keeps_every_promise() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.soak.soak", "--duration", "60s", "--seed", "20261126", "--fault-every", "3,7"],
        capture_output=True, text=True, timeout=600,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "all invariants held" in result.stdout
