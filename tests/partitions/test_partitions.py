"""The short seeded partition campaign: 75 s of faults, seed 20261203, each held 3-12 s.

It needs root for its network namespaces and takes about two and a half minutes on a quiet machine
(a minute of set-up and tear-down, 75 s of faults); tests/conftest.py starts it early so that it
runs beside other tests rather than at the end. bench/results/partitions/ has the long runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.partitions

if os.geteuid() != 0:
    pytest.skip("network namespaces need root", allow_module_level=True)


@pytest.mark.timeout(600)
def test_a_short_seeded_partition_campaign_keeps_every_invariant() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.partitions.campaign", "--duration", "75s", "--seed", "20261203",
         "--hold", "3,12", "--results", ""],
        capture_output=True, text=True, timeout=600,
    )
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    assert "all invariants held" in result.stdout
