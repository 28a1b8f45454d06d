"""The replicated ledger with every process on a host of its own (devstack/netns.py).

Hosts: etcd1-3 (a three-member etcd), pg1-3 (Patroni + Postgres, synchronous mode as in
devstack/ha.py), kafka1..N (KRaft brokers), dynamodb (DynamoDB Local), api1-2 (the API), relay1-2
(a leader and a standby), sink. Each listens on its host's address with the standard port of its
kind; the campaign's clients and checks run in the root namespace and reach them through the
bridge. Our own processes (API, relays, sink) are restarted when they die, as supervisord would;
the Patroni nodes, etcd members and brokers only when the fault that killed them says so.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

from core.settings import DatabaseSettings, DynamoSettings, KafkaSettings, Settings
from devstack.ha import Etcd, HACluster, PatroniNode
from devstack.harness import CLI, LedgerProcess, as_role, process_env
from devstack.kafka import KafkaNode, new_cluster_id
from devstack.netns import Host, Network
from devstack.processes import Child, DynamoDBLocal, wait_for_port, wait_until

PG, REST, ETCD, ETCD_PEER, KAFKA, CONTROLLER, DYNAMODB, API = 5432, 8008, 2379, 2380, 9092, 9093, 8000, 8080


class HostedCluster(HACluster):
    """HACluster's three Patroni nodes and a three-member etcd, each on its host."""

    def __init__(self, root: Path, net: Network) -> None:
        self.root = Path(root).absolute()
        etcd_hosts = [net.add_host(f"etcd{i}") for i in (1, 2, 3)]
        initial = ",".join(f"etcd{i + 1}=http://{h.address}:{ETCD_PEER}" for i, h in enumerate(etcd_hosts))
        self.etcds = []
        for i, host in enumerate(etcd_hosts):
            member = Etcd(ETCD, ETCD_PEER, self.root / f"etcd{i + 1}", self.root / f"etcd{i + 1}.log",
                          host=host.address, member=f"etcd{i + 1}", initial_cluster=initial)
            member.wrapper = host.wrap([])
            self.etcds.append(member)
        self.etcd = self.etcds[0]
        endpoints = [f"{h.address}:{ETCD}" for h in etcd_hosts]
        self.nodes = []
        for i in range(3):
            host = net.add_host(f"pg{i + 1}")
            node = PatroniNode(i, self.root, PG, REST, ETCD, host=host.address, etcd_hosts=endpoints,
                               trusted=str(net.subnet))
            node.wrapper = host.wrap([])
            node.name = f"pg{i + 1}"
            node.log_file = self.root / node.name / "patroni.log"
            node.data_dir = self.root / node.name / "data"
            node.log_dir = self.root / node.name / "log"
            node.socket_dir = self.root / node.name / "run"
            node.config_file = self.root / node.name / "patroni.yml"
            self.nodes.append(node)

    def start(self, timeout: float = 120) -> None:
        self.prepare()
        try:
            for member in self.etcds:
                member.data_dir.mkdir(parents=True, exist_ok=True)
                member.data_dir.chmod(0o700)
                member.launch()
            for member in self.etcds:  # a member serves clients once a majority has elected a leader
                wait_for_port(member.port, 60, member.process, member.host)
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.thaw()
        for node in self.nodes:
            if node.alive or node.postmaster_pid():
                node.stop()
        for member in self.etcds:
            member.request_stop()
        for member in self.etcds:
            if member.process is not None:
                member.wait_or_kill(10)


class HostedStack:
    """Every part of the ledger on its own host; `processes()` names what a fault may hit."""

    def __init__(self, root: Path, net: Network, brokers: int = 1, api_workers: int = 1,
                 retry_seconds: int = 20, db_timeout: int = 5) -> None:
        self.root, self.net = root, net
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        self.cluster = HostedCluster(root / "ha", net)
        cluster_id = new_cluster_id()
        kafka_hosts = [net.add_host(f"kafka{i + 1}") for i in range(brokers)]
        voters = ",".join(f"{i + 1}@{h.address}:{CONTROLLER}" for i, h in enumerate(kafka_hosts))
        self.brokers: list[KafkaNode] = []
        for i, host in enumerate(kafka_hosts):
            node = KafkaNode(i + 1, KAFKA, CONTROLLER, root / f"kafka{i + 1}", voters, cluster_id, replicas=brokers,
                             heap="384m", log_file=root / f"kafka{i + 1}.log")
            node.host = host.address
            node.wrapper = host.wrap([])
            self.brokers.append(node)
        dynamo_host = net.add_host("dynamodb")
        self.dynamodb = DynamoDBLocal(DYNAMODB, log_file=root / "dynamodb.log")
        self.dynamodb.host = dynamo_host.address
        self.dynamodb.wrapper = dynamo_host.wrap([])
        self.settings = Settings(
            database=DatabaseSettings(url=self.cluster.url),
            kafka=KafkaSettings(bootstrap=",".join(b.bootstrap for b in self.brokers), partitions=3,
                                sink_group="partitions-sink"),
            dynamo=DynamoSettings(endpoint=self.dynamodb.endpoint, region="eu-west-1"),
        )
        self.env = process_env(self.settings, LEDGER_RATE_LIMIT="0", LEDGER_DB_TIMEOUT=str(db_timeout),
                               LEDGER_WRITE_RETRY_SECONDS=str(retry_seconds))
        self.ledger: dict[str, tuple[Host, LedgerProcess]] = {}
        for name, kind in (("api1", "api"), ("api2", "api"), ("relay1", "relay"), ("relay2", "relay"),
                           ("sink", "sink")):
            host = net.add_host(name)
            env = dict(self.env)
            if kind == "api":
                env.update(LEDGER_HTTP_HOST=host.address, LEDGER_HTTP_PORT=str(API),
                           LEDGER_HTTP_WORKERS=str(api_workers))
            stop = signal.SIGINT if kind == "api" else signal.SIGTERM
            process = LedgerProcess(kind, env, root / f"{name}.log", stop_signal=stop,
                                    url=f"http://{host.address}:{API}" if kind == "api" else "")
            process.wrapper = host.wrap([])
            self.ledger[name] = (host, process)
        self.restarts: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._held: set[str] = set()  # ledger processes a fault keeps down or frozen: not restarted meanwhile

    @property
    def api_urls(self) -> dict[str, str]:
        return {name: p.url for name, (_h, p) in self.ledger.items() if p.kind == "api"}

    def start(self) -> None:
        self.cluster.start()
        for broker in self.brokers:
            broker.launch()
        self.dynamodb.start(timeout=120)
        for broker in self.brokers:
            wait_for_port(broker.port, 240, broker.process, broker.host)
        subprocess.run([CLI, "migrate"], env=as_role(self.env, "migrate"), check=True, capture_output=True,
                       timeout=120)
        for _host, process in self.ledger.values():
            process.start()
        for url in self.api_urls.values():
            wait_until(lambda url=url: _ready(url), 90, interval=0.3, what=f"the API on {url}")
        threading.Thread(target=self._supervise, daemon=True, name="supervisor").start()

    def key(self, department: str) -> str:
        out = subprocess.run([CLI, "keys", "create", "--department", department, "--scopes", "read,write"],
                             env=as_role(self.env, "keys"), check=True, capture_output=True, text=True,
                             timeout=60).stdout
        return out.strip().splitlines()[-1]

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for name, (_host, process) in self.ledger.items():
                    if name not in self._held and not process.alive:
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        process.start()

    def hold(self, name: str) -> None:
        with self._lock:
            self._held.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)

    def children(self) -> dict[str, Child]:
        """Every process by its host's name."""
        found: dict[str, Child] = {m.member: m for m in self.cluster.etcds}
        found.update({n.name: n for n in self.cluster.nodes})
        found.update({f"kafka{b.node_id}": b for b in self.brokers})
        found["dynamodb"] = self.dynamodb
        found.update({name: p for name, (_h, p) in self.ledger.items()})
        return found

    def relay_leader(self) -> str | None:
        """The relay host whose log says last that it leads (None when none does)."""
        best, at = None, -1
        for name in ("relay1", "relay2"):
            text = self.ledger[name][1].log()
            lead, stand = text.rfind("relay is the leader"), text.rfind("relay is standby")
            if lead > stand and lead > at and self.ledger[name][1].alive:
                best, at = name, lead
        return best

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for _host, process in self.ledger.values():
                process.thaw()
                process.stop()
            for broker in self.brokers:
                broker.thaw()
            running = [b for b in self.brokers if b.request_stop()]
            for broker in running:
                broker.wait_or_kill(15)
            self.dynamodb.thaw()
            self.dynamodb.stop()
            for member in self.cluster.etcds:
                member.thaw()
            self.cluster.stop()


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
