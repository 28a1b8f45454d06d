"""The alert rules of deploy/prometheus/: valid (`promtool check rules`), each one unit-tested
(`promtool test rules`, with Debian's promtool), on metrics that some process really exports, and
each one explained in the runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.prometheus import ALERT_RULES, POSTGRES_QUERIES, RULES_DIR

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = [RULES_DIR / "alerts_test.yml", RULES_DIR / "alerts_long_test.yml"]
# Where the series the rules use come from, besides the exporters' own (pg_*, patroni_*, node_*, up).
EXPORTERS_OF_OURS = [ROOT / "cdc" / "metrics.py", ROOT / "service" / "api" / "metrics.py"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make install` (scripts/system-deps.sh installs prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=RULES_DIR)


def alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", ALERT_RULES.read_text(), re.M)


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", ALERT_RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    tested = promtool("test", "rules", *(path.name for path in RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_has_a_case_where_it_fires_and_one_where_it_stays_quiet() -> None:
    tests = "".join(path.read_text() for path in RULE_TESTS)
    # An `alert_rule_test` entry: its alertname, then exp_alerts, empty (quiet) or a list (fires).
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
    quiet = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]", tests))
    assert len(alert_names()) > 10
    assert set(alert_names()) - fired == set()
    assert set(alert_names()) - quiet == set()


def test_every_ledger_series_a_rule_uses_is_exported() -> None:
    ours = " ".join(path.read_text() for path in EXPORTERS_OF_OURS)
    # The exporter names a custom query's series <query>_<column>.
    queries = POSTGRES_QUERIES.read_text()
    exported = {f"{query}_{column}" for query, body in re.findall(r"^(\w+):\n((?:\s.*\n)+)", queries, re.M)
                for column in re.findall(r"^\s+- (\w+):\n\s+usage: GAUGE", body, re.M)}
    rules = "\n".join(line for line in ALERT_RULES.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\b(ledger_\w+)", rules))
    assert used
    for name in used:
        base = re.sub(r"_(bucket|total)$", "", name)
        assert f'"{name}"' in ours or f'"{base}"' in ours or name in exported, f"{name}: exported by none"


def test_every_alert_is_in_the_runbook() -> None:
    runbook = (ROOT / "deploy" / "RUNBOOK.md").read_text()
    section = runbook.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    assert [name for name in alert_names() if f"`{name}`" not in section] == []
