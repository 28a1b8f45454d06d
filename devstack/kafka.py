"""Apache Kafka in KRaft mode (no ZooKeeper) as child processes on loopback.

The broker's jars come from Maven Central: devstack/kafka-broker/pom.xml pins the version and
`make install` copies them, with their dependencies, into .local/tools/kafka/libs; they run on the
system's Java 17. Every node is broker and controller at once. `make run` runs one node under its
supervisor (`KafkaNode.command()`, data in .local/kafka, kept across restarts); the CDC fault tests
run a `KafkaCluster` of three nodes with replication factor 3 and min.insync.replicas 2, so that one
node can die, freeze or lead the busiest partitions without an acknowledged message being lost.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from devstack.processes import TOOLS, ChildServer, wait_for_port, wait_until

KAFKA_LIBS = TOOLS / "kafka" / "libs"
KAFKA_AGENTS = TOOLS / "kafka" / "agents"  # the JMX exporter's agent (the same pom)
LOG_CONFIG = Path(__file__).resolve().parent / "kafka-broker" / "log4j2.yaml"
JMX_EXPORTER_CONFIG = Path(__file__).resolve().parent / "kafka-broker" / "jmx-exporter.yml"
FORMAT_HEAP = "128m"  # kafka.tools.StorageTool's: a short command (formatting took 0.8 s with it)


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as Kafka writes them)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaNode(ChildServer):
    """One KRaft node (broker + controller), its data and configuration in `folder`."""

    name = "kafka"

    def __init__(self, node_id: int, port: int, controller_port: int, folder: Path, voters: str,
                 cluster_id: str, replicas: int = 1, heap: str = "512m", log_file: Path | None = None,
                 replica_lag_ms: int = 30_000, metrics_port: int = 0) -> None:
        """`metrics_port`: where Prometheus's JMX exporter agent serves the broker's metrics (0: no agent)."""
        super().__init__(port, log_file)
        self.node_id = node_id
        self.controller_port = controller_port
        self.folder = folder
        self.voters = voters
        self.cluster_id = cluster_id
        self.replicas = replicas
        self.heap = heap
        self.replica_lag_ms = replica_lag_ms
        self.metrics_port = metrics_port

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.folder / "server.properties"

    def properties(self) -> dict[str, str]:
        in_sync = str(min(2, self.replicas))
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.folder / "data"),
            # Topics are made by the relay with the partition count it is configured with; their
            # replication comes from here, so one setting serves a single node and a cluster.
            "auto.create.topics.enable": "false",
            "default.replication.factor": str(self.replicas),
            "min.insync.replicas": in_sync,
            "offsets.topic.replication.factor": str(self.replicas),
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": str(self.replicas),
            "transaction.state.log.min.isr": in_sync,
            # A replica that was not in sync never becomes leader: it could lack acknowledged messages.
            "unclean.leader.election.enable": "false",
            "replica.lag.time.max.ms": str(self.replica_lag_ms),
            "group.initial.rebalance.delay.ms": "0",
        }

    def prepare(self) -> None:
        """Write the configuration; format the data folder the first time (it is kept afterwards)."""
        installed_libs()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        if (self.folder / "data" / "meta.properties").exists():
            return
        # `--cluster-id=ID`, not `--cluster-id ID`: a random id may begin with "-" (1 in 64), which the
        # tool would read as an option.
        # The tool gets a small heap of its own, not the broker's. It failed once in a CI run (exit 1,
        # its output not kept): a failure now says why, and a second try follows a first failure
        # (formatting is idempotent with --ignore-formatted).
        format_command = self._java("kafka.tools.StorageTool", "format", "--ignore-formatted",
                                    f"--cluster-id={self.cluster_id}", "--config", str(self.properties_file),
                                    heap=FORMAT_HEAP)
        failures = []
        for _ in range(2):
            done = subprocess.run(format_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if done.returncode == 0:
                return
            failures.append(f"exit {done.returncode}: {done.stdout.strip()[-2000:]}")
            print(f"Kafka's storage format of {self.folder} failed, {failures[-1]}", file=sys.stderr)
        raise RuntimeError(f"Kafka's storage format of {self.folder} failed twice: {' | '.join(failures)}")

    def command(self) -> list[str]:
        agent = []
        if self.metrics_port:
            agent = [f"-javaagent:{jmx_exporter_agent()}=127.0.0.1:{self.metrics_port}:{JMX_EXPORTER_CONFIG}"]
        return self._java("kafka.Kafka", str(self.properties_file), agent=agent)

    def _java(self, main: str, *args: str, agent: list[str] | None = None, heap: str | None = None) -> list[str]:
        heap = heap or self.heap
        return ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", *(agent or []),
                f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp", f"{KAFKA_LIBS}/*", main, *args]

    def launch(self, **popen: Any) -> None:
        if not self.alive:
            self.prepare()
        super().launch(**popen)


def kafka_version() -> str:
    """The broker version the pom pins."""
    pom = (Path(__file__).resolve().parent / "kafka-broker" / "pom.xml").read_text()
    return pom.split("<kafka.version>", 1)[1].split("<", 1)[0]


def jmx_exporter_agent() -> Path:
    """The JMX exporter agent's jar, once `make install` has put the version the pom pins there."""
    found = sorted(KAFKA_AGENTS.glob("jmx_prometheus_javaagent-*.jar"))
    if not found:
        raise RuntimeError(f"the JMX exporter agent is not installed in {KAFKA_AGENTS}: run `make install`")
    return found[-1]


def installed_libs() -> Path:
    """KAFKA_LIBS, once `make install` has put the pinned version there."""
    if not (KAFKA_LIBS / f"kafka_2.13-{kafka_version()}.jar").exists():
        raise RuntimeError(f"Apache Kafka is not installed in {KAFKA_LIBS}: run `make install`")
    return KAFKA_LIBS


class KafkaCluster:
    """One KRaft node per (broker port, controller port) pair, data in `folder`.

    start/stop/kill/freeze/thaw act on every node, as a whole-cluster fault; `nodes[i]` for one.
    """

    def __init__(self, folder: Path, ports: list[tuple[int, int]], heap: str = "512m",
                 replica_lag_ms: int = 30_000) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id())
        cluster_id = id_file.read_text().strip()
        voters = ",".join(f"{i + 1}@127.0.0.1:{controller}" for i, (_port, controller) in enumerate(ports))
        self.nodes = [
            KafkaNode(i + 1, port, controller, folder / f"node{i + 1}", voters, cluster_id, replicas=len(ports),
                      heap=heap, log_file=folder / f"node{i + 1}.log", replica_lag_ms=replica_lag_ms)
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 180) -> None:
        """Start every node that is not running and wait until all of them serve as brokers.

        The nodes start together: a broker opens its port only once a majority of the
        controllers has elected a leader.
        """
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            wait_for_port(node.port, max(1.0, deadline - time.monotonic()), node.process, node.host)
        self.wait_for_brokers(max(1.0, deadline - time.monotonic()))

    def wait_for_brokers(self, timeout: float = 60) -> None:
        """Until the cluster's metadata lists every node as a broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})

        def all_registered() -> bool:
            try:
                return len(admin.list_topics(timeout=2).brokers) == len(self.nodes)
            except Exception:  # still electing, or a node still starting
                return False

        wait_until(all_registered, timeout, interval=0.3, what=f"{len(self.nodes)} Kafka brokers")

    def busiest_leader(self, topic: str) -> KafkaNode:
        """The node that leads the most partitions of `topic`."""
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(topic, timeout=10)
        leaders = Counter(p.leader for p in metadata.topics[topic].partitions.values())
        node_id = leaders.most_common(1)[0][0]
        return next(node for node in self.nodes if node.node_id == node_id)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to every node at once; kill -9 what has not stopped after `timeout` seconds.

        One at a time, the last node would wait for a controller majority that is already gone.
        """
        running = [node for node in self.nodes if node.request_stop()]
        deadline = time.monotonic() + timeout
        for node in running:
            node.wait_or_kill(max(0.1, deadline - time.monotonic()))

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def freeze(self) -> None:
        for node in self.nodes:
            node.freeze()

    def thaw(self) -> None:
        for node in self.nodes:
            node.thaw()
