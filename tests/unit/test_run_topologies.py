"""`make run` and `make run-ha` keep their data apart: each topology has its own ledger, broker and
DynamoDB Local store, so the read store of one never holds the other ledger's events."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack import run
from devstack.kafka import KafkaNode


def program_folders(config: str) -> dict[str, str]:
    """The working directory of each supervised program, and the data folders on its command line."""
    found = {}
    for section in config.split("[program:")[1:]:
        name = section.split("]", 1)[0]
        command = re.search(r"^command=(.*)$", section, re.M)
        directory = re.search(r"^directory=(.*)$", section, re.M)
        found[name] = " ".join(m.group(1) for m in (command, directory) if m)
    return found


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(run, "LOCAL", tmp_path)
    monkeypatch.delenv("LEDGER_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("LEDGER_DYNAMODB_ENDPOINT", raising=False)
    monkeypatch.setattr(KafkaNode, "prepare", lambda self: None)  # no jars needed to write a config
    return tmp_path


def test_each_topology_keeps_its_own_broker_and_read_store(local: Path) -> None:
    single = program_folders(run.supervisor_config(local / "bin"))
    replicated = program_folders(run.supervisor_config(local / "bin", run.ha_cluster()))
    ha = str(local / "ha")
    for program in ("broker", "dynamodb"):
        assert str(local) in single[program] and ha not in single[program]
        assert f"{ha}/" in replicated[program]
    assert str(local / "dynamodb") in single["dynamodb"]
    assert f"{ha}/dynamodb" in replicated["dynamodb"] and f"{local}/dynamodb " not in replicated["dynamodb"] + " "
