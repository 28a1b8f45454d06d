"""The bench's private stack: Postgres, broker, DynamoDB Local and the ledger's own processes.

Everything listens on free loopback ports and lives in one scratch folder, so a bench never
touches `make run`'s data or the machine's own services.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from devstack.postgres import LocalPostgres
from devstack.processes import Broker, DynamoDBLocal
from migrations.runner import upgrade
from service.ledger.keys import create_key

CLI = str(Path(sys.executable).with_name("booking-ledger"))
ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".local" / "tools"
MESSAGE_DB_PACKAGE = "@eventide/message-db@1.3.1"
DEPARTMENT = "bench"

# What a production operator sets on a dedicated Postgres (durability untouched: fsync and
# synchronous_commit stay on). Each was measured on its own; see bench/README.md.
POSTGRES_SETTINGS = {
    "max_wal_size": "'4GB'",  # no checkpoint storms in the middle of a run
    "checkpoint_timeout": "'15min'",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sql(url: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def fetch_value(url: str, query: str, *args: object) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@dataclass
class Process:
    """One of the ledger's processes (`booking-ledger api|relay|sink`) with its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def pids(self) -> list[int]:
        """The process and its children (granian's workers)."""
        found = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            found += [int(pid) for pid in children.read_text().split()]
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Stack:
    folder: Path
    postgres: LocalPostgres = field(init=False)
    broker: Broker | None = None
    dynamodb: DynamoDBLocal | None = None
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        self.postgres = LocalPostgres(self.folder / "postgres", free_port())

    # -- Postgres ---------------------------------------------------------------------------
    def start_postgres(self) -> None:
        self.postgres.start()
        run_sql(self.postgres.url, *(f"ALTER SYSTEM SET {k} = {v}" for k, v in POSTGRES_SETTINGS.items()),
                "SELECT pg_reload_conf()")

    def database(self, name: str, migrate: bool = True) -> str:
        run_sql(self.postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        url = self.postgres.url.rsplit("/", 1)[0] + f"/{name}"
        if migrate:
            upgrade(url)
        return url

    def api_key(self, url: str, scopes: tuple[str, ...] = ("read", "write")) -> str:
        async def run() -> str:
            conn = await asyncpg.connect(url)
            try:
                return (await create_key(conn, DEPARTMENT, scopes))[1]
            finally:
                await conn.close()

        return asyncio.run(run())

    def install_message_db(self, name: str) -> str:
        """message-db's own install script into a scratch database of this cluster."""
        package = TOOLS / "node_modules" / "@eventide" / "message-db" / "database"
        if not package.exists():
            raise RuntimeError(f"message-db is not installed: run `make install` (npm {MESSAGE_DB_PACKAGE})")
        run_sql(self.postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.postgres.port), "PGUSER": "ledger",
               "DATABASE_NAME": name}
        subprocess.run(["bash", str(package / "install.sh")], env=env, check=True, capture_output=True)
        return self.postgres.url.rsplit("/", 1)[0] + f"/{name}"

    # -- broker and DynamoDB Local ----------------------------------------------------------
    def start_pipeline_servers(self) -> None:
        self.broker = Broker(free_port(), log_file=self.folder / "broker.log")
        self.broker.start()
        self.dynamodb = DynamoDBLocal(free_port(), log_file=self.folder / "dynamodb.log")
        self.dynamodb.start()

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env.update({"LEDGER_DATABASE_URL": database_url, "LEDGER_LOG_FORMAT": "json"})
        if self.broker:
            env["LEDGER_KAFKA_BOOTSTRAP"] = self.broker.bootstrap
        if self.dynamodb:
            env.update({"LEDGER_DYNAMODB_ENDPOINT": self.dynamodb.endpoint, "AWS_REGION": "eu-west-1",
                        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
        env.update(extra)
        return env

    # -- the ledger's processes -------------------------------------------------------------
    def start(self, kind: str, database_url: str, **extra: str) -> Process:
        log_path = self.folder / f"{kind}-{len(self.processes)}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([CLI, kind], env=self.env(database_url, **extra), stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        started = Process(kind, process, log_path)
        self.processes.append(started)
        return started

    def start_api(self, database_url: str, workers: int = 2, ready_path: str = "/health/ready",
                  **extra: str) -> tuple[Process, str]:
        port = free_port()
        api = self.start("api", database_url, LEDGER_HTTP_PORT=str(port), LEDGER_HTTP_WORKERS=str(workers),
                         LEDGER_RATE_LIMIT="0", **extra)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    return api, url
            except httpx.HTTPError:
                pass
            if api.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {api.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for server in (self.broker, self.dynamodb):
            if server:
                server.stop()
        self.postgres.stop()
