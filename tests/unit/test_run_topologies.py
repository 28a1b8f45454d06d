"""`make run` and `make run-ha` keep their data apart: each topology has its own ledger, broker and
DynamoDB Local store, so the read store of one never holds the other ledger's events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from devstack import kafka, run
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
    monkeypatch.setattr(kafka, "jmx_exporter_agent", lambda: tmp_path / "jmx_prometheus_javaagent.jar")
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


def scraped(config_file: Path) -> dict[str, list[str]]:
    """job -> the addresses the Prometheus configuration of `make run` scrapes (JSON is YAML)."""
    config = json.loads(config_file.read_text())
    return {job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
            for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_part_of_each_topology(local: Path) -> None:
    single = run.supervisor_config(local / "bin")
    jobs = scraped(local / "prometheus" / "prometheus.yml")
    assert set(jobs) == {"api", "relay", "sink", "deliver", "postgres", "kafka", "node"}
    assert jobs["postgres"] == [f"127.0.0.1:{run.POSTGRES_EXPORTER_PORT}"]
    assert f"--web.listen-address=127.0.0.1:{run.POSTGRES_EXPORTER_PORT}" in single
    assert "-javaagent:" in program_folders(single)["broker"] and f":{run.BROKER_METRICS_PORT}:" in single

    cluster = run.ha_cluster()
    replicated = run.supervisor_config(local / "bin", cluster)
    jobs = scraped(local / "ha" / "prometheus" / "prometheus.yml")
    assert set(jobs) == {"api", "relay", "sink", "deliver", "postgres", "patroni", "etcd", "kafka", "node"}
    assert jobs["etcd"] == [f"127.0.0.1:{cluster.etcd.port}"]
    assert jobs["patroni"] == [f"127.0.0.1:{node.rest_port}" for node in cluster.nodes]
    assert len(set(jobs["postgres"])) == len(cluster.nodes)
    for node, address in zip(cluster.nodes, jobs["postgres"], strict=True):
        section = replicated.split(f"[program:postgres-exporter-{node.name}]", 1)[1].split("[program:", 1)[0]
        assert f"--web.listen-address={address}" in section and f":{node.pg_port}/" in section
