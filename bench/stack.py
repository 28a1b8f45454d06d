"""The bench's private stack: the harness's Stack (devstack/harness.py) with what only the bench needs.

Everything listens on free loopback ports and lives in one scratch folder, so a bench never
touches `make run`'s data or the machine's own services.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import asyncpg

from devstack import harness
from devstack.harness import LedgerProcess, fetch_value, free_port, run_sql
from service.ledger.keys import create_key

__all__ = ["Stack", "LedgerProcess", "fetch_value", "free_port", "peak_rss_mb", "run_sql"]

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".local" / "tools"
MESSAGE_DB_PACKAGE = "@eventide/message-db@1.3.1"
DEPARTMENT = "bench"

# What a production operator sets on a dedicated Postgres (durability untouched: fsync and
# synchronous_commit stay on). Each was measured on its own; see bench/README.md.
POSTGRES_SETTINGS = {
    "max_wal_size": "'4GB'",  # no checkpoint storms in the middle of a run
    "checkpoint_timeout": "'15min'",
    "max_connections": "400",  # 256 in flight for the per-connection baselines, and the APIs' pools
}


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Stack(harness.Stack):
    def start_postgres(self, **server_settings: str) -> None:
        super().start_postgres(**{**POSTGRES_SETTINGS, **server_settings})
        self.postgres.stop()  # max_connections takes effect only at a start
        self.postgres.start()

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
        return harness.database_url(self.postgres.url, name)

    def start_bench_api(self, database_url: str, workers: int = 2, ready_path: str = "/health/ready",
                        **extra: str) -> tuple[LedgerProcess, str]:
        """The API without a rate limit: (its process, its URL)."""
        api = self.start_api(database_url, workers, ready_path, **{"LEDGER_RATE_LIMIT": "0", **extra})
        return api, api.url
