"""One harness for real servers and the ledger's own processes, on free loopback ports.

The tests, the soak and the bench build their topologies from these parts: `Stack` (a private
Postgres, and on demand Kafka and DynamoDB Local, in one scratch folder), `LedgerProcess`
(`booking-ledger api|relay|sink` as a child we can stop, kill -9, freeze and read the log of) and
`start_api` (an API that answers readiness). The environment a process gets is made from the
settings themselves (`Settings.to_env()`), so each `LEDGER_*` name is written once, in
core/settings.py. A new topology (another kind of Postgres, say) is one more part here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from core import roles
from core.settings import DatabaseSettings, DynamoSettings, KafkaSettings, Settings
from devstack.kafka import KafkaCluster
from devstack.postgres import LocalPostgres
from devstack.processes import Child, DynamoDBLocal, wait_until

CLI = str(Path(sys.executable).with_name("booking-ledger"))
# One append through ledger_append (migration 0007), which raises its refusals as SQLSTATEs
# BL001-BL005. The service calls ledger_append_batch (service.ledger.append); the bench's raw
# driver and the tests that hold an append's transaction open call this.
APPEND_SQL = "SELECT * FROM ledger_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sql(url: str, *statements: str) -> None:
    """Run statements in order on a fresh connection, from synchronous code."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def fetch_value(url: str, query: str, *args: object) -> object:
    """The first value of a query's first row, on a fresh connection, from synchronous code."""

    async def run() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def database_url(server_url: str, name: str) -> str:
    """The URL of another database on the same server."""
    return server_url.rsplit("/", 1)[0] + "/" + name


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of one of our processes: this one's, minus ambient LEDGER_* values, plus `settings`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
    env.update(settings.to_env())
    env["LEDGER_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


def as_role(env: Mapping[str, str], command: str) -> dict[str, str]:
    """`env` for `booking-ledger command`, connecting as the command's own role (core/roles.py).

    LEDGER_DATABASE_URL names the server and database (the harness gives its superuser's URL);
    the process gets the same URL with the command's role instead, as production gives each
    process its own credentials. That URL is kept as LEDGER_MIGRATE_DATABASE_URL for `migrate`.
    """
    env = dict(env)
    url = env.get("LEDGER_DATABASE_URL")
    role = roles.BY_COMMAND.get(command)
    if url and role is not None and role != roles.OWNER:
        env["LEDGER_MIGRATE_DATABASE_URL"] = env.get("LEDGER_MIGRATE_DATABASE_URL") or url
        env["LEDGER_DATABASE_URL"] = roles.with_user(url, role)
    return env


class LedgerProcess(Child):
    """`booking-ledger <kind>` as a child in its own process group, its output in `log_path`.

    It connects as its kind's own role (`as_role`) unless `own_role` is False (then as `env` says).
    """

    stop_timeout = 20
    log_file: Path

    def __init__(self, kind: str, env: Mapping[str, str], log_path: Path, stop_signal: signal.Signals = signal.SIGTERM,
                 url: str = "", own_role: bool = True) -> None:
        super().__init__(log_path)
        self.kind = kind
        self.env = env
        self.stop_signal = stop_signal
        self.url = url  # the API's base URL
        self.own_role = own_role

    def __repr__(self) -> str:
        return f"LedgerProcess({self.kind!r}, pid={self.process.pid if self.process else None}, log={self.log_path})"

    @property
    def log_path(self) -> Path:
        return self.log_file

    def command(self) -> list[str]:
        return [CLI, self.kind]

    def start(self) -> LedgerProcess:
        self.launch(env=as_role(self.env, self.kind) if self.own_role else dict(self.env))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        wait_until(lambda: text in self.log(), timeout, what=f"{self.kind} to log {text!r}")


def start_api(env: Mapping[str, str], log_path: Path, workers: int = 2, ready_path: str = "/health/ready",
              timeout: float = 60, own_role: bool = True) -> LedgerProcess:
    """`booking-ledger api` on a free port (its `url`), returned once `ready_path` answers 200."""
    port = free_port()
    env = {**env, "LEDGER_HTTP_PORT": str(port), "LEDGER_HTTP_WORKERS": str(workers)}
    url = f"http://127.0.0.1:{port}"
    api = LedgerProcess("api", env, log_path, stop_signal=signal.SIGINT, url=url, own_role=own_role).start()

    def ready() -> bool:
        if not api.alive:
            raise RuntimeError(f"the API exited; see {log_path}")
        try:
            return httpx.get(url + ready_path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout, interval=0.2, what=f"the API on {url} to be ready")
    except BaseException:
        api.stop()
        raise
    return api


@dataclass
class Stack:
    """A private stack in `folder`: Postgres, and on demand Kafka and DynamoDB Local; our processes."""

    folder: Path
    postgres: LocalPostgres = field(init=False)
    broker: KafkaCluster | None = None
    dynamodb: DynamoDBLocal | None = None
    processes: list[LedgerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # the cluster may belong to the postgres user (when we run as root)
        self.postgres = LocalPostgres(self.folder / "postgres", free_port())

    def remove(self) -> None:
        """Delete the stack's folder (data and logs), once it is stopped."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def start_postgres(self, **server_settings: str) -> None:
        """Start Postgres; `server_settings` are applied with ALTER SYSTEM (values as SQL literals)."""
        self.postgres.start()
        if server_settings:
            run_sql(self.postgres.url, *(f"ALTER SYSTEM SET {k} = {v}" for k, v in server_settings.items()),
                    "SELECT pg_reload_conf()")

    def database(self, name: str, migrate: bool = True, template: str | None = None) -> str:
        """A new database on this Postgres (dropped first if it exists), migrated to head unless told not to."""
        from migrations.runner import upgrade

        create = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        run_sql(self.postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', create)
        url = database_url(self.postgres.url, name)
        if migrate and template is None:
            upgrade(url)
        return url

    def start_pipeline_servers(self, dynamodb_data: Path | None = None, kafka_nodes: int = 1) -> None:
        """Kafka (`kafka_nodes` KRaft nodes) and DynamoDB Local (in memory unless given a folder)."""
        self.broker = KafkaCluster(self.folder / "kafka", [(free_port(), free_port()) for _ in range(kafka_nodes)])
        self.broker.start()
        self.dynamodb = DynamoDBLocal(free_port(), data_dir=dynamodb_data, log_file=self.folder / "dynamodb.log")
        self.dynamodb.start()

    def settings(self, database: str | None = None, kafka: KafkaSettings | None = None,
                 dynamo: DynamoSettings | None = None) -> Settings:
        """Settings that point every part at this stack's servers."""
        if kafka is None and self.broker:
            kafka = KafkaSettings(bootstrap=self.broker.bootstrap)
        if dynamo is None and self.dynamodb:
            dynamo = DynamoSettings(endpoint=self.dynamodb.endpoint, region="eu-west-1")
        return Settings(database=DatabaseSettings(url=database or self.postgres.url),
                        kafka=kafka or KafkaSettings(), dynamo=dynamo or DynamoSettings())

    def env(self, settings: Settings | str | None = None, **extra: str) -> dict[str, str]:
        if not isinstance(settings, Settings):
            settings = self.settings(settings)
        return process_env(settings, **extra)

    def start(self, kind: str, settings: Settings | str | None = None, **extra: str) -> LedgerProcess:
        """`booking-ledger kind` against this stack (or `settings`, or another database's URL)."""
        log_path = self.folder / f"{kind}-{len(self.processes)}.log"
        process = LedgerProcess(kind, self.env(settings, **extra), log_path).start()
        self.processes.append(process)
        return process

    def start_api(self, settings: Settings | str | None = None, workers: int = 2,
                  ready_path: str = "/health/ready", **extra: str) -> LedgerProcess:
        log_path = self.folder / f"api-{len(self.processes)}.log"
        api = start_api(self.env(settings, **extra), log_path, workers, ready_path)
        self.processes.append(api)
        return api

    def stop(self) -> None:
        """Everything this stack started, our processes first, Postgres last."""
        for process in reversed(self.processes):
            process.stop()
        for server in (self.broker, self.dynamodb):
            if server:
                server.stop()
        self.postgres.stop(mode="fast")
