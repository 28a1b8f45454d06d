"""Prometheus and the exporters it scrapes besides our own processes, as child processes on loopback.

All from Debian's packages (scripts/system-deps.sh): `prometheus` 2.42 (and its `promtool`, which
the alert rules' tests run), `prometheus-postgres-exporter` (one per Postgres node, with the
ledger's own queries from deploy/prometheus/postgres-queries.yml) and `prometheus-node-exporter`
(free disk space only). Patroni serves its own /metrics on its REST port; the API serves the sum of
its workers at /metrics (service/api/metrics.py), so one target covers every worker; the relay and
the sink each serve their own port (cdc/metrics.py).

`make run` and `make run-ha` run these under their supervisor (`command()`); the alert tests start
them (`start()`) with short intervals, and rules whose `for:` durations and thresholds are
shortened (`rules_text`), so that a rule fires within seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import ChildServer, wait_until

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
ALERT_RULES = RULES_DIR / "alerts.yml"
POSTGRES_QUERIES = RULES_DIR / "postgres-queries.yml"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make install` (scripts/system-deps.sh)")
    return found


@dataclass(frozen=True)
class Target:
    """One scrape target: a job name, host:port, and the path of its metrics."""

    job: str
    address: str
    path: str = "/metrics"
    labels: Mapping[str, str] = field(default_factory=dict)


class Prometheus(ChildServer):
    """Prometheus on 127.0.0.1:`port`, its configuration and data in `folder`."""

    name = "prometheus"

    def __init__(self, port: int, folder: Path, targets: list[Target], rule_files: list[Path] | None = None,
                 scrape_interval: str = "5s", evaluation_interval: str = "5s", retention: str = "7d",
                 log_file: Path | None = None) -> None:
        super().__init__(port, log_file)
        self.folder = Path(folder).absolute()
        self.targets = targets
        self.rule_files = [ALERT_RULES] if rule_files is None else rule_files
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.retention = retention

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.folder / "prometheus.yml"

    def config(self) -> dict[str, Any]:
        jobs: dict[tuple[str, str], list[Target]] = {}
        for target in self.targets:
            jobs.setdefault((target.job, target.path), []).append(target)
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval,
                       # a scrape must end before the next one starts
                       "scrape_timeout": self.scrape_interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "metrics_path": path,
                 "static_configs": [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]}
                for (job, path), targets in jobs.items()
            ],
        }

    def prepare(self) -> None:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        # Prometheus reads YAML; JSON is YAML, and needs no YAML library here.
        self.config_file.write_text(json.dumps(self.config(), indent=2))

    def command(self) -> list[str]:
        return [_binary("prometheus"), f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.folder / 'data'}", f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def workdir(self) -> Path:
        return self.folder

    def start(self, timeout: float = 60) -> None:
        """Start it and return once it is ready (its rules loaded, scraping)."""
        self.prepare()
        super().start(timeout)
        wait_until(lambda: self._get("/-/ready") is not None, timeout, interval=0.2, what="Prometheus to be ready")

    def _get(self, path: str, **params: str) -> Any:
        try:
            answer = httpx.get(self.url + path, params=params, timeout=5)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        return answer.json() if answer.headers.get("content-type", "").startswith("application/json") else answer.text

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now (each element's `metric` labels and `value`)."""
        answer = self._get("/api/v1/query", query=expr)
        return [] if answer is None else list(answer["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now (a resolved alert is no longer listed)."""
        answer = self._get("/api/v1/alerts")
        return [] if answer is None else list(answer["data"]["alerts"])

    def alert_state(self, name: str) -> str:
        """`firing`, `pending` or `inactive` for the alert rule `name` (firing wins over pending)."""
        states = {a["state"] for a in self.alerts() if a["labels"].get("alertname") == name}
        return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"

    def targets_up(self) -> dict[str, bool]:
        """Each target's scrape URL: whether its last scrape succeeded."""
        answer = self._get("/api/v1/targets")
        if answer is None:
            return {}
        return {t["scrapeUrl"]: t["health"] == "up" for t in answer["data"]["activeTargets"]}

    def wait_for_alert(self, name: str, state: str = "firing", timeout: float = 60) -> float:
        """Wait until alert `name` is in `state`; the seconds it took."""
        started = time.monotonic()
        wait_until(lambda: self.alert_state(name) == state, timeout, interval=0.2, what=f"alert {name} {state}")
        return time.monotonic() - started


def rules_text(source: Path = ALERT_RULES, for_: str | None = None, replace: Mapping[str, str] | None = None) -> str:
    """The rules of `source`, every `for:` set to `for_` and each key of `replace` (which must occur
    exactly once) replaced by its value: the same rules, made to fire within seconds for a test."""
    text = source.read_text()
    if for_ is not None:
        text, count = re.subn(r"^(\s+for:) \S+$", rf"\1 {for_}", text, flags=re.M)
        assert count, f"no `for:` in {source}"
    for old, new in (replace or {}).items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {source}, not once"
        text = text.replace(old, new)
    return text


class PostgresExporter(ChildServer):
    """Debian's prometheus-postgres-exporter for the Postgres at `database_url`, with the ledger's queries."""

    name = "postgres-exporter"

    def __init__(self, port: int, database_url: str, log_file: Path | None = None) -> None:
        super().__init__(port, log_file)
        self.database_url = database_url

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_source(self) -> str:
        """The exporter's DSN: the loopback servers here speak no TLS, and lib/pq asks for it by default."""
        return self.database_url + ("&" if "?" in self.database_url else "?") + "sslmode=disable"

    def command(self) -> list[str]:
        return [_binary("prometheus-postgres-exporter"), f"--web.listen-address={self.address}",
                f"--extend.query-path={POSTGRES_QUERIES}", "--disable-settings-metrics", "--log.level=warn"]

    def launch(self, **popen: Any) -> None:
        env = dict(popen.pop("env", None) or {"PATH": "/usr/bin:/bin"})
        env["DATA_SOURCE_NAME"] = self.data_source
        super().launch(env=env, **popen)


class NodeExporter(ChildServer):
    """Debian's prometheus-node-exporter with the filesystem collector alone (the disk-filling alert)."""

    name = "node-exporter"

    def command(self) -> list[str]:
        return [_binary("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{self.port}",
                "--collector.disable-defaults", "--collector.filesystem", "--log.level=warn"]
