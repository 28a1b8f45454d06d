"""Backups the DBA's way: pgBackRest (Debian's `pgbackrest`) with continuous WAL archiving.

One repository on local disk (under `.local/` for `make run-ha`, a scratch folder in the tests),
one stanza (`ledger`) naming every Postgres node of the cluster; pgBackRest finds the primary
among them and backs up from it. Postgres pushes each finished WAL segment into the repository
(`archive_command`), so a restore can replay WAL up to any moment after the first full backup
(point-in-time recovery). When we are root the clusters belong to the `postgres` user, and so do
the repository and every pgBackRest command (run through `runuser`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.ha import HACluster
from devstack.postgres import LocalPostgres

STANZA = "ledger"
ARCHIVE_TIMEOUT = 60  # seconds: a quiet primary still closes a segment for the archive this often (the RPO bound)


@dataclass(frozen=True)
class Node:
    """One Postgres node the stanza knows: its data folder, port and socket folder."""

    data_dir: Path
    port: int
    socket_dir: Path


class PgBackRest:
    """A repository at `repo` and its configuration file `config`, for the nodes of one cluster."""

    def __init__(self, repo: Path, nodes: list[Node], user: str = "ledger") -> None:
        self.repo = Path(repo).absolute()
        self.config = self.repo.parent / f"{self.repo.name}.conf"
        self.nodes = nodes
        self.user = user
        self._as_postgres = os.geteuid() == 0

    @staticmethod
    def installed() -> bool:
        return shutil.which("pgbackrest") is not None

    def write_config(self) -> None:
        """The repository folder and the configuration (rewritten each time: ports may change)."""
        for folder in (self.repo, self.repo / "lock"):
            folder.mkdir(parents=True, exist_ok=True)
            self._own(folder)
        lines = [
            "[global]",
            f"repo1-path={self.repo}",
            "repo1-retention-full=2",  # two full backups and what depends on them; older ones expire
            "compress-type=lz4",  # cheap on CPU, which is what this machine is short of
            "start-fast=y",  # a backup begins with an immediate checkpoint instead of waiting for one
            "archive-check=y",
            f"lock-path={self.repo / 'lock'}",
            "log-level-console=warn",
            "log-level-stderr=warn",
            "log-level-file=off",
            "",
            f"[{STANZA}]",
        ]
        for number, node in enumerate(self.nodes, start=1):
            lines += [f"pg{number}-path={node.data_dir}", f"pg{number}-port={node.port}",
                      f"pg{number}-socket-path={node.socket_dir}", f"pg{number}-user={self.user}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o644)

    def archive_command(self, node: int = 0) -> str:
        """What node `node`'s Postgres runs for each finished WAL segment (`archive_command`).
        pgBackRest checks that the pushing server's data folder is pg1-path: each node names its own."""
        return (f"pgbackrest --config={self.config} --stanza={STANZA} --pg1-path={self.nodes[node].data_dir} "
                "archive-push %p")

    def postgres_settings(self, node: int = 0) -> dict[str, str]:
        """The settings that make a node archive into this repository (only a primary archives)."""
        return {"archive_mode": "on", "archive_command": self.archive_command(node),
                "archive_timeout": str(ARCHIVE_TIMEOUT), "wal_level": "replica"}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"pgbackrest {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()}")
        return done

    def stanza_create(self) -> None:
        self.run("stanza-create")

    def check(self) -> None:
        """Archiving works end to end: a WAL switch on the primary reaches the repository."""
        self.run("check")

    def backup(self, kind: str = "full") -> None:
        """`full`, `diff` or `incr` (an incremental one needs an earlier backup to build on)."""
        self.run("backup", f"--type={kind}")

    def restore(self, target_time: str | None = None) -> None:
        """Restore the first node (stopped) from the repository; with `target_time` (a timestamp
        with its zone), replay WAL up to that moment and promote, else replay all archived WAL."""
        args = ["restore", "--delta"]
        if target_time is not None:
            args += ["--type=time", f"--target={target_time}", "--target-action=promote"]
        self.run(*args)

    def info(self) -> str:
        return self.run("info", "--output=json").stdout

    def _own(self, path: Path) -> None:
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)


def archive_into(server: LocalPostgres, backrest: PgBackRest) -> None:
    """Make a new (initialized, not started) cluster archive its WAL into `backrest`'s repository."""
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        conf.write("\n# WAL archiving into the pgBackRest repository (devstack/backups.py)\n")
        for name, value in backrest.postgres_settings().items():
            conf.write(f"{name} = '{value}'\n")


def start_restored(server: LocalPostgres, timeout: float = 120) -> None:
    """Start a cluster that `PgBackRest.restore` prepared and wait until its recovery ended and it
    was promoted (it then takes writes)."""
    # The local clusters keep their socket in the data folder, so a backup carries the socket's
    # lock file with the old postmaster's pid; left there, it stops the restored one from starting.
    for stale in server.data_dir.glob(".s.PGSQL.*.lock"):
        stale.unlink()
    server.log_file.touch()
    started = server._run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_file), "-w",
                          "-t", str(int(timeout)), "-o", f"-p {server.port}", "start", check=False)
    if started.returncode != 0:
        raise RuntimeError(f"the restored cluster did not start: {started.stderr.strip()}; see {server.log_file}")
    deadline = time.monotonic() + timeout
    while True:
        probe = server._run("psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", "ledger", "-d", "postgres",
                            "-tAc", "SELECT pg_is_in_recovery()", check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "f":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the restored cluster is still recovering after {timeout} s; see {server.log_file}")
        time.sleep(0.1)


def archive_cluster(cluster: HACluster, repo: Path) -> PgBackRest:
    """Make every node of a Patroni cluster archive into a repository at `repo` (only the primary
    archives; after a failover the new one goes on). Call before the nodes start; `stanza_create`
    once a primary runs."""
    backrest = PgBackRest(repo, [Node(n.data_dir, n.pg_port, n.socket_dir) for n in cluster.nodes])
    backrest.write_config()
    for index, node in enumerate(cluster.nodes):
        node.parameters.update(backrest.postgres_settings(index))
    return backrest
