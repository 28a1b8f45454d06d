"""A private Postgres cluster from the system's binaries (Debian's postgresql package).

Postgres refuses to run as root; when we are root (CI, these machines) the cluster belongs to
the `postgres` system user and its commands run through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

ROLE = "ledger"  # the cluster's superuser (its DBA): makes the roles, runs nothing of the ledger's
DATABASE = "ledger"
# The ledger's roles (core/roles.py), made by the DBA's script: what each process connects as.
ROLES_SQL = Path(__file__).parent.parent / "deploy" / "roles.sql"


def _bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("no Postgres server binaries found; install Debian's 'postgresql' (scripts/system-deps.sh)")


class LocalPostgres:
    """One cluster in `data_dir`, listening on 127.0.0.1:`port` only, trust auth on loopback."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.bindir = _bindir()
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, input=input)

    def _own(self, path: Path) -> None:
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres and subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(self.data_dir.parent)]
        ).returncode != 0:
            raise RuntimeError(
                f"the postgres user cannot reach {self.data_dir.parent}: give its parent folders o+x, "
                "or point LEDGER_DATABASE_URL at another Postgres"
            )
        self.data_dir.chmod(0o700)
        self._own(self.data_dir)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", ROLE, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8",
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# booking-ledger local stack\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.data_dir}'\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
            )

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self, timeout: int = 60) -> None:
        """Initialize when new, start when stopped, and make sure the ledger database exists."""
        if not self.initialized():
            self.init()
        if not self.running():
            self.log_file.touch()
            self._own(self.log_file)
            started = self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(timeout),
                "-o", f"-p {self.port}", "start", check=False,
            )
            if started.returncode != 0:
                log_tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"Postgres did not start on port {self.port} (is the port taken?): "
                                   + " | ".join(log_tail))
        self._wait_ready(timeout)
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.strip() != "1":
            self._psql("postgres", f'CREATE DATABASE "{DATABASE}" OWNER "{ROLE}"')
        self.make_roles()

    def make_roles(self, database: str = DATABASE) -> None:
        """The ledger's roles (deploy/roles.sql), as the DBA would make them; in template1 too, so
        that every database created later (the tests make many) lets ledger_owner migrate it."""
        for name in dict.fromkeys((database, "template1")):
            self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-d", name,
                      "-v", "ON_ERROR_STOP=1", "-q", "-f", "-", input=ROLES_SQL.read_text())

    def _psql(self, database: str, sql: str) -> str:
        result = self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-tAc", sql,
        )
        return result.stdout

    def _wait_ready(self, timeout: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            probe = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postgres on port {self.port} not ready; see {self.log_file}")
            time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        if self.initialized() and self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)
