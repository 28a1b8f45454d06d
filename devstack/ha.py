"""A replicated ledger on loopback: etcd and three Patroni-managed Postgres 15 nodes.

Debian's packages only (`patroni` 3.0.2, `etcd-server` 3.4). Why the settings are what they are,
as found on this stack (deploy/RUNBOOK.md has the same table for production):

- Patroni's `etcd:` (v2 API) section, etcd started with `--enable-v2=true`. Never `etcd3:` with
  Patroni 3.0.2: its leader update there is an unconditional put, and a leader frozen past the TTL
  took the key back on resume and threw away the new leader's acknowledged commits.
- `ttl: 7, loop_wait: 1, retry_timeout: 3`: a lost leader's key expires 6-7 s after it was cut
  off (the TTL from its last renewal, one loop ago at most); loop_wait + 2 × retry_timeout <= ttl,
  Patroni's rule for a leader that cannot reach etcd to demote itself before its key can expire.
  The synchronous standby then asks the old leader's REST API whether it still runs (2 s, Patroni's
  own timeout, for a host that is cut off), promotes itself, the other replica streams from it, and
  the API reconnects: writes come back 10-13 s after the cut, inside the 15 s the partition
  campaign allows a primary cut off. retry_timeout 3 (Patroni's documented minimum) rides out an
  etcd leader election (1-2 s at etcd's defaults) without demoting anyone.
- etcd with `--pre-vote`: an etcd member that was cut off keeps calling elections with ever higher
  terms; without the pre-vote phase, its return forced the majority into a new election, Patroni's
  requests failed for seconds, and a leader promoted a moment before demoted itself again (seen in
  the partition campaign: promoted 8 s after the cut, demoted 4 s later, promoted again 2 s after
  that). With it, a member that cannot win does not disturb the leader the others follow.
- `synchronous_mode` and `synchronous_mode_strict`: a commit is acknowledged only once a standby
  has it on disk, only that standby may be promoted, and with no standby left nothing is
  acknowledged at all (rather than on one disk only).
- `use_pg_rewind` (+ `wal_log_hints`): a killed leader rejoins as a replica by itself.
- `remove_data_directory_on_rewind_failure` and `..._on_diverged_timelines`: an old leader that
  pg_rewind cannot bring back (its timeline diverged in a way rewind refuses, or an unclean data
  directory) is cloned afresh from the leader instead of staying down ("start failed"). What it
  throws away was never acknowledged: strict synchronous mode put every acknowledged commit on the
  standby that was promoted, and nothing else left the ledger (the relay and the feed wait for it).
- `wal_sender_timeout` and `wal_receiver_timeout` 5 s (default 60 s), and TCP keepalives on both
  ends of every replication connection (`tcp_keepalives_*` for the walsender's socket; for the
  walreceiver's, a libpq service file, `SERVICE_FILE`, since Patroni writes primary_conninfo from
  a fixed list of keywords that has no keepalives): a replication link that is cut, or left
  half-open by a lost reset (a replica "running" while its lag only grows, seen in the partition
  campaign), is ended within seconds instead of a minute or two hours, the walsender of a lost
  synchronous standby goes (so Patroni names another one), and the replica connects again.
- `log_directory` outside PGDATA: pg_rewind overwrites PGDATA/log.
- `wal_retrieve_retry_interval: 500ms` (default 5 s): a promotion and a replica's switch to the
  new leader each waited out one such interval after the old leader vanished.

Postgres refuses to run as root, so when we are root Patroni and Postgres run as the `postgres`
user (started directly with Popen's `user=`, not through `runuser`, which stops itself when its
child is frozen). Patroni runs on /usr/bin/python3 (its packaged shebang), not the project's venv.
The superuser is `ledger`, trusted on loopback, as in devstack/postgres.py.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devstack.postgres import DATABASE, ROLE, ROLES_SQL, _bindir
from devstack.processes import Child, ChildServer, wait_for_port, wait_until

SCOPE = "booking-ledger"
PATRONI = "/usr/bin/patroni"


def _postgres_user() -> tuple[int, int] | None:
    """(uid, gid) of `postgres` when we must switch to it (we are root), else None."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("postgres")
    return user.pw_uid, user.pw_gid


class Etcd(ChildServer):
    """One etcd member with the v2 API on (Patroni's `etcd:` DCS needs it)."""

    name = "etcd"

    def __init__(self, port: int, peer_port: int, data_dir: Path, log_file: Path | None = None,
                 host: str = "127.0.0.1", member: str = "ledger-etcd", initial_cluster: str = "") -> None:
        super().__init__(port, log_file)
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.host = host
        self.member = member
        self.initial_cluster = initial_cluster  # name=peer-url,...; empty: this member alone

    def command(self) -> list[str]:
        client, peer = f"http://{self.host}:{self.port}", f"http://{self.host}:{self.peer_port}"
        return [
            shutil.which("etcd") or "/usr/bin/etcd", "--name", self.member, "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.member}={peer}", "--enable-v2=true",
            "--pre-vote=true", "--logger", "zap", "--log-level", "warn",
        ]


# libpq's defaults for every connection Patroni and its Postgres make (a service file named by
# PGSERVICEFILE and PGSERVICE in their environment): the walreceiver's replication connection,
# pg_rewind's and pg_basebackup's. Keepalives probe an idle connection after 3 s and give up after
# 3 unanswered probes 1 s apart; a peer that closed the connection answers the first probe with a
# reset. The connect timeout bounds the blocking connects (pg_rewind, pg_basebackup) to a host that
# is cut off; the walreceiver's own connect is bounded by the keepalives and wal_receiver_timeout.
SERVICE = "booking-ledger-node"
SERVICE_FILE = f"""[{SERVICE}]
keepalives=1
keepalives_idle=3
keepalives_interval=1
keepalives_count=3
connect_timeout=5
"""

# The cluster-wide settings Patroni writes to etcd when it bootstraps the cluster.
BOOTSTRAP_DCS: dict[str, Any] = {
    "ttl": 7,
    "loop_wait": 1,
    "retry_timeout": 3,
    "maximum_lag_on_failover": 1048576,
    "synchronous_mode": True,
    "synchronous_mode_strict": True,
    "synchronous_node_count": 1,
    "postgresql": {
        "use_pg_rewind": True,
        "use_slots": True,
        "parameters": {
            "wal_level": "replica",
            "hot_standby": "on",
            "wal_log_hints": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "max_connections": 200,
            "wal_keep_size": "256MB",
            # After a failed attempt to stream, a standby waits this long before it
            # tries again, and a promote request waits out the same sleep: at the
            # default (5 s) a failover took 5 s longer than the TTL to accept writes,
            # and 5 s more before the other replica streamed from the new leader
            # (and strict synchronous commits could complete).
            "wal_retrieve_retry_interval": "500ms",
            # A replication connection that carries nothing for this long is ended, on the
            # primary (a standby that stopped answering: its walsender goes, and with it its
            # claim to be the synchronous standby) and on the replica (a primary that went
            # silent: it connects again, to whoever leads). Each side asks the other for a reply
            # after half of it, so a live but idle link never reaches it.
            "wal_sender_timeout": "5s",
            "wal_receiver_timeout": "5s",
            # The server's side of every connection, the walsender's included.
            "tcp_keepalives_idle": 3,
            "tcp_keepalives_interval": 1,
            "tcp_keepalives_count": 3,
        },
    },
}


class PatroniNode(Child):
    """One Patroni daemon and the Postgres it runs.

    Patroni starts its postmaster in a session of its own (so that Postgres outlives a Patroni
    crash): kill, freeze and thaw reach both and every process under them (`pids`), not the
    process group only.
    """

    stop_timeout = 30

    def __init__(self, index: int, root: Path, pg_port: int, rest_port: int, etcd_port: int,
                 host: str = "127.0.0.1", etcd_hosts: list[str] | None = None, trusted: str = "127.0.0.1/32") -> None:
        super().__init__(root / f"node{index}" / "patroni.log")
        self.index = index
        self.name = f"node{index}"
        self.pg_port = pg_port
        self.rest_port = rest_port
        self.etcd_port = etcd_port
        self.host = host  # the address Postgres and the REST API listen on
        self.etcd_hosts = etcd_hosts or [f"127.0.0.1:{etcd_port}"]
        self.trusted = trusted  # the network whose connections Postgres trusts
        self.root = root
        self.data_dir = root / self.name / "data"
        self.log_dir = root / self.name / "log"  # Postgres's own logs: outside PGDATA (pg_rewind)
        self.socket_dir = root / self.name / "run"
        self.config_file = root / self.name / "patroni.yml"
        self.parameters: dict[str, str] = {}  # more Postgres settings (WAL archiving: devstack/backups.py)

    @property
    def rest(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def service_file(self) -> Path:
        """libpq's defaults for this node's connections (SERVICE_FILE), beside its patroni.yml."""
        return self.config_file.with_name("pg_service.conf")

    def config(self) -> dict[str, Any]:
        trust = ["local all all trust", f"host all all {self.trusted} trust",
                 f"host replication all {self.trusted} trust", "local replication all trust"]
        return {
            "scope": SCOPE,
            "name": self.name,
            "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
            "restapi": {"listen": f"{self.host}:{self.rest_port}", "connect_address": f"{self.host}:{self.rest_port}"},
            # The v2 API; never `etcd3:` (see above). One member as `host`, a cluster's as `hosts`.
            "etcd": {"host": self.etcd_hosts[0]} if len(self.etcd_hosts) == 1 else {"hosts": self.etcd_hosts},
            "bootstrap": {
                "dcs": BOOTSTRAP_DCS,
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                "pg_hba": trust,
            },
            "postgresql": {
                "listen": f"{self.host}:{self.pg_port}",
                "connect_address": f"{self.host}:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(_bindir()),
                "pgpass": str(self.root / self.name / "pgpass"),
                "authentication": {
                    "superuser": {"username": ROLE},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": "rewinder"},
                },
                "pg_hba": trust,
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
                # A new replica's base backup starts with a checkpoint: spread, it would take minutes.
                "basebackup": [{"checkpoint": "fast"}],
                "parameters": {
                    "unix_socket_directories": str(self.socket_dir),
                    "shared_buffers": "128MB",
                    "logging_collector": "on",
                    "log_directory": str(self.log_dir),
                    "log_filename": "postgresql-%a.log",
                    "log_truncate_on_rotation": "on",
                    **self.parameters,
                },
            },
            "watchdog": {"mode": "off"},
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def prepare(self) -> None:
        for folder in (self.root / self.name, self.log_dir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Patroni reads YAML; JSON is YAML, and needs no YAML library here.
        self.config_file.write_text(json.dumps(self.config(), indent=2))
        self.service_file.write_text(SERVICE_FILE)
        owner = _postgres_user()
        if owner is not None:
            for path in (self.root / self.name, self.log_dir, self.socket_dir, self.config_file, self.service_file):
                os.chown(path, *owner)
            if self.data_dir.exists():
                os.chown(self.data_dir, *owner)

    def command(self) -> list[str]:
        return [PATRONI, str(self.config_file)]

    def environment(self) -> dict[str, str]:
        """Patroni's environment; it passes it on to Postgres, and so to the walreceiver's libpq."""
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.root / self.name),
                "PGSERVICEFILE": str(self.service_file), "PGSERVICE": SERVICE}

    def workdir(self) -> Path:
        return self.root / self.name

    def start(self) -> None:
        self.prepare()
        owner = _postgres_user()
        env = self.environment()
        if owner is None:
            self.launch(env=env)
        elif self.wrapper:  # `ip netns exec` needs root: it switches to postgres through setpriv (an exec, no fork)
            setpriv = ["setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--clear-groups", "--"]
            self.launch(env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, _switch=setpriv)
        else:  # the postgres user's groups only, not ours
            self.launch(env=env, user=owner[0], group=owner[1], extra_groups=[])

    def launch(self, _switch: list[str] | None = None, **popen: Any) -> None:
        if not _switch:
            super().launch(**popen)
            return
        wrapper = self.wrapper
        self.wrapper = [*wrapper, *_switch]
        try:
            super().launch(**popen)
        finally:
            self.wrapper = wrapper

    def restart(self) -> None:
        """Start the node again after a kill or stop; it rejoins as a replica (pg_rewind where needed)."""
        if self.alive:
            self.stop()
        self.start()

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def pids(self) -> list[int]:
        """Patroni, the postmaster and every process under them."""
        patroni = [self.process.pid] if self.process is not None and self.alive else []
        postmaster = self.postmaster_pid()
        return _with_descendants(patroni + ([postmaster] if postmaster else []))

    def signal_all(self, sig: signal.Signals) -> None:
        """`sig` to every one of `pids`: SIGSTOP freezes the host (not dead), SIGKILL loses it."""
        for pid in self.pids():
            _signal(pid, sig)

    def signal_postgres(self, sig: signal.Signals) -> None:
        """`sig` to the postmaster and every process under it, not to Patroni: SIGSTOP freezes this
        node's Postgres while Patroni goes on; SIGKILL to the postmaster alone is `kill_postmaster`."""
        postmaster = self.postmaster_pid()
        for pid in _with_descendants([postmaster] if postmaster else []):
            _signal(pid, sig)

    def kill_postmaster(self) -> None:
        """kill -9 of the postmaster alone (its backends end on their own); Patroni sees it gone."""
        postmaster = self.postmaster_pid()
        if postmaster:
            _signal(postmaster, signal.SIGKILL)

    def kill(self) -> None:
        """kill -9 of Patroni and its Postgres together: a lost node."""
        super().kill()
        wait_until(lambda: self.postmaster_pid() is None, timeout=10, what=f"{self.name}'s postmaster to die")

    def stop(self, timeout: float | None = None) -> None:
        """A clean stop: Patroni stops its Postgres (fast) on SIGTERM."""
        timeout = self.stop_timeout if timeout is None else timeout
        self.thaw()  # its Postgres too, even when Patroni is gone
        super().stop(timeout)
        pid = self.postmaster_pid()
        if pid is not None:  # Patroni died before its Postgres: stop that one too
            _signal(pid, signal.SIGINT)
            wait_until(lambda: self.postmaster_pid() is None, timeout=timeout, what=f"{self.name}'s Postgres to stop")

    def rest_get(self, path: str, timeout: float = 1.0) -> tuple[int, Any]:
        """(status, JSON body) of a Patroni REST call; (0, None) when it does not answer."""
        try:
            with urllib.request.urlopen(self.rest + path, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            try:
                return error.code, json.loads(error.read() or b"null")
            except ValueError:
                return error.code, None
        except (OSError, ValueError):
            return 0, None


class HACluster:
    """etcd + three Patroni nodes under `root`; what `make run-ha`, the failover tests and the bench use."""

    def __init__(self, root: Path, pg_ports: list[int], rest_ports: list[int], etcd_ports: tuple[int, int]) -> None:
        self.root = Path(root).absolute()
        self.etcd = Etcd(etcd_ports[0], etcd_ports[1], self.root / "etcd", self.root / "etcd.log")
        self.nodes = [PatroniNode(i, self.root, pg, rest, etcd_ports[0])
                      for i, (pg, rest) in enumerate(zip(pg_ports, rest_ports, strict=True))]

    @classmethod
    def on_free_ports(cls, root: Path, size: int = 3) -> HACluster:
        ports = _free_ports(2 * size + 2)
        return cls(root, ports[:size], ports[size:2 * size], (ports[-2], ports[-1]))

    @property
    def url(self) -> str:
        """The libpq multi-host URL every service and the CLI use: it lands on the read-write node."""
        hosts = ",".join(f"{n.host}:{n.pg_port}" for n in self.nodes)
        return f"postgresql://{ROLE}@{hosts}/{DATABASE}?target_session_attrs=read-write"

    def node_url(self, node: PatroniNode, database: str = DATABASE) -> str:
        return f"postgresql://{ROLE}@{node.host}:{node.pg_port}/{database}"

    def start(self, timeout: float = 90) -> None:
        """Start etcd and every node; return when a leader accepts writes, the ledger database
        exists and a synchronous standby holds every commit."""
        self.prepare()
        try:
            self.etcd.start(timeout=30)
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def prepare(self) -> None:
        """Folders and configuration files, owned by the user the nodes run as."""
        self.root.mkdir(parents=True, exist_ok=True)
        owner = _postgres_user()
        if owner is not None:
            if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(self.root.parent)]).returncode:
                raise RuntimeError(f"the postgres user cannot reach {self.root}: give its parent folders o+x")
            os.chown(self.root, *owner)
        self.etcd.data_dir.mkdir(parents=True, exist_ok=True)
        self.etcd.data_dir.chmod(0o700)
        for node in self.nodes:
            node.prepare()

    def wait_ready(self, timeout: float = 90) -> PatroniNode:
        leader = wait_until(self.primary, timeout=timeout, what="a Patroni leader")
        wait_for_port(leader.pg_port, timeout=timeout, host=leader.host)
        # Strict synchronous mode: nothing commits, CREATE DATABASE included, before a standby streams.
        self.wait_replicas(1, synchronous=True, timeout=timeout)
        self.ensure_database(leader)
        return leader

    def ensure_database(self, leader: PatroniNode) -> None:
        psql = [str(_bindir() / "psql"), "-h", leader.host, "-p", str(leader.pg_port), "-U", ROLE,
                "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc"]

        def run(sql: str) -> str:
            return subprocess.run([*psql, sql], check=True, capture_output=True, text=True, timeout=30).stdout

        if run(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").strip() != "1":
            run(f'CREATE DATABASE "{DATABASE}" OWNER "{ROLE}"')
        # The ledger's roles, as a DBA makes them (deploy/roles.sql); it only adds what is missing.
        subprocess.run([str(_bindir() / "psql"), "-h", leader.host, "-p", str(leader.pg_port), "-U", ROLE,
                        "-d", DATABASE, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                       input=ROLES_SQL.read_text(), check=True, capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        for node in self.nodes:
            node.thaw()
        for node in self.nodes:
            if node.alive or node.postmaster_pid():
                node.stop()
        self.etcd.stop()

    def primary(self) -> PatroniNode | None:
        """The node whose Patroni answers 200 on /primary (it holds the leader key and runs read-write)."""
        for node in self.nodes:
            if node.rest_get("/primary", timeout=3)[0] == 200:
                return node
        return None

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster (/cluster of any node that answers)."""
        for node in self.nodes:
            status, body = node.rest_get("/cluster", timeout=3)
            if status == 200 and body:
                return list(body.get("members", []))
        return []

    def replicas(self, synchronous: bool = False, max_lag: int = 0) -> list[str]:
        """Names of the replicas streaming from the leader at most `max_lag` bytes behind it (only
        the synchronous ones if asked). Under writes a streaming replica is seldom exactly level:
        Patroni compares positions read a loop apart."""
        roles = ("sync_standby",) if synchronous else ("sync_standby", "replica")
        return [m["name"] for m in self.members()
                if m.get("role") in roles and m.get("state") in ("running", "streaming")
                and str(m.get("lag", 0)).isdigit() and int(m.get("lag", 0)) <= max_lag]

    def wait_replicas(self, count: int, synchronous: bool = False, timeout: float = 60) -> list[str]:
        return wait_until(lambda: len(names := self.replicas(synchronous)) >= count and names,
                          timeout=timeout, what=f"{count} {'synchronous ' if synchronous else ''}replica(s)")

    def node(self, name: str) -> PatroniNode:
        return next(n for n in self.nodes if n.name == name)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now (all bound at once, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _with_descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.append(pid)
            pending.extend(children.get(pid, []))
    return found


if __name__ == "__main__":  # a quick look by hand: python -m devstack.ha /tmp/ha
    import sys

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = HACluster.on_free_ports(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ledger-ha"))
    started = time.monotonic()
    cluster.start()
    print(f"ready in {time.monotonic() - started:.1f}s: {cluster.url}", flush=True)
    try:
        while True:
            time.sleep(5)
            print(json.dumps([(m["name"], m.get("role"), m.get("state")) for m in cluster.members()]), flush=True)
    except KeyboardInterrupt:
        cluster.stop()
