"""`make run`: the whole local stack on loopback, under one supervisor, in the foreground.

`make run-ha` (`--ha`): the same, with a replicated Postgres instead of the single one: etcd and
three Patroni nodes (devstack.ha) run under the supervisor too, so a killed node is started
again and rejoins as a replica; the services reach the primary through the multi-host URL.

Postgres (the system of record) is started first with pg_ctl and migrated; then supervisord
runs the broker, DynamoDB Local, the API, the relay and the sink, and restarts any of them
that dies (within a second or two). Ctrl-C stops all of it, Postgres last. A part whose
LEDGER_* variable is set is not started: the given server is used instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from core import checkpoints, roles
from core.settings import (
    LOCAL_DYNAMODB_ENDPOINT,
    LOCAL_KAFKA_BOOTSTRAP,
    DynamoSettings,
    HttpSettings,
    KafkaSettings,
    MetricsSettings,
)
from devstack.backups import STANZA, PgBackRest, archive_cluster
from devstack.ha import HACluster, PatroniNode
from devstack.kafka import KafkaCluster
from devstack.postgres import DATABASE, ROLE, LocalPostgres
from devstack.processes import DynamoDBLocal
from devstack.prometheus import NodeExporter, PostgresExporter, Prometheus, Target

LOCAL = Path(".local").absolute()
BIN = Path(sys.executable).parent
# Where the settings look when nothing is set (core/settings.py, core/roles.py): the servers go there.
def _port(address: str) -> int:
    """The port of a URL or of host:port."""
    port = urlsplit(address if "//" in address else "//" + address).port
    assert port is not None, address
    return port


POSTGRES_PORT = _port(roles.local_url(roles.OWNER))
BROKER_PORT = _port(LOCAL_KAFKA_BOOTSTRAP)
CONTROLLER_PORT = BROKER_PORT + 1
DYNAMODB_PORT = _port(LOCAL_DYNAMODB_ENDPOINT)
READABLE_LOGS = 'LEDGER_LOG_FORMAT="console"'  # production logs JSON lines; a terminal wants these
RELAY_METRICS_PORT = 9101
SINK_METRICS_PORT = 9102
DELIVER_METRICS_PORT = 9103
# The walk-through's receiver runs in another shell on this machine: subscriptions may reach it.
WEBHOOK_HOSTS = 'LEDGER_WEBHOOK_ALLOWED_HOSTS="127.0.0.1"'
NODE_EXPORTER_PORT = 9100
BROKER_METRICS_PORT = 9404  # the JMX exporter agent in the broker
POSTGRES_EXPORTER_PORT = 9187  # make run-ha: one per node, 9187, 9188, 9189
HA_POSTGRES_PORTS = [POSTGRES_PORT + i for i in range(3)]
HA_REST_PORTS = [58008, 58009, 58010]
HA_ETCD_PORTS = (52379, 52380)


def ha_cluster() -> HACluster:
    return HACluster(LOCAL / "ha", HA_POSTGRES_PORTS, HA_REST_PORTS, HA_ETCD_PORTS)


def supervisor_config(bin_dir: Path, cluster: HACluster | None = None) -> str:
    logs = LOCAL / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sections = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={logs / 'supervisord.log'}",
        f"pidfile={LOCAL / 'supervisord.pid'}",
        f"childlogdir={logs}",
        "",
        "[unix_http_server]",
        f"file={LOCAL / 'supervisor.sock'}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{LOCAL / 'supervisor.sock'}",
    ]
    for name, program in _programs(bin_dir, cluster).items():
        sections += _program_section(name, program, logs, cluster)
    return "\n".join(sections) + "\n"


# name -> (command, stop signal, environment, working directory)
Programs = dict[str, tuple[list[str], str, str, Path]]


def _programs(bin_dir: Path, cluster: HACluster | None) -> Programs:
    # Each topology keeps its own broker and read store beside its own ledger: events of one
    # ledger never show up in the other's DynamoDB table.
    data = LOCAL if cluster is None else cluster.root
    programs: Programs = {}
    if cluster is not None:
        programs["etcd"] = (cluster.etcd.command(), "TERM", "", cluster.root)
        for node in cluster.nodes:
            env = ",".join(f'{name}="{value}"' for name, value in node.environment().items() if name != "PATH")
            programs[node.name] = (node.command(), "TERM", env, node.root / node.name)
    if not os.environ.get("LEDGER_KAFKA_BOOTSTRAP"):
        broker = KafkaCluster(data / "kafka", [(BROKER_PORT, CONTROLLER_PORT)]).nodes[0]
        broker.metrics_port = BROKER_METRICS_PORT
        broker.prepare()
        programs["broker"] = (broker.command(), "TERM", "", broker.folder)
    if not os.environ.get("LEDGER_DYNAMODB_ENDPOINT"):
        dynamodb = DynamoDBLocal(DYNAMODB_PORT, data_dir=data / "dynamodb")
        programs["dynamodb"] = (dynamodb.command(), "TERM", "", dynamodb.workdir())
    cli = str(bin_dir / "booking-ledger")
    # Each process connects as its own role (core/roles.py): on the local Postgres the CLI picks
    # it by itself; on the cluster, its multi-host URL is given with that role.
    api_env, relay_env, deliver_env = (("", "", "") if cluster is None else
                                       (f',LEDGER_DATABASE_URL="{roles.with_user(cluster.url, roles.API)}"'
                                        f',LEDGER_PATRONI_URLS="{",".join(n.rest for n in cluster.nodes)}"'
                                        # the console's cluster page
                                        f',LEDGER_ETCD_URLS="http://127.0.0.1:{cluster.etcd.port}"',
                                        f',LEDGER_DATABASE_URL="{roles.with_user(cluster.url, roles.RELAY)}"',
                                        f',LEDGER_DATABASE_URL="{roles.with_user(cluster.url, roles.DELIVER)}"'))
    relay_env += _checkpoint_key(data)
    programs.update(_monitoring(data, cluster))
    programs.update({
        "api": ([cli, "api"], "INT", f"{READABLE_LOGS},{WEBHOOK_HOSTS}{api_env}", Path.cwd()),
        "relay": ([cli, "relay"], "TERM",
                  f'{READABLE_LOGS},LEDGER_RELAY_METRICS_PORT="{RELAY_METRICS_PORT}"{relay_env}', Path.cwd()),
        "sink": ([cli, "sink"], "TERM", f'{READABLE_LOGS},LEDGER_SINK_METRICS_PORT="{SINK_METRICS_PORT}"',
                 Path.cwd()),
        "deliver": ([cli, "deliver"], "TERM",
                    f'{READABLE_LOGS},{WEBHOOK_HOSTS},LEDGER_DELIVER_METRICS_PORT="{DELIVER_METRICS_PORT}"{deliver_env}',
                    Path.cwd()),
    })
    return programs


def _checkpoint_key(data: Path) -> str:
    """The relay's setting for the checkpoints' signing key: the given one, else a key of the local stack's
    own under `data`/keys (made on the first run; it never leaves the machine)."""
    if os.environ.get("LEDGER_CHECKPOINT_KEY_FILE"):
        return ""
    path = data / "keys" / "checkpoint-ed25519.pem"
    if not path.exists():
        signer = checkpoints.Signer.create(path)
        print(f"made the local checkpoint key {signer.key_id} in {path}", flush=True)
    return f',LEDGER_CHECKPOINT_KEY_FILE="{path.resolve()}"'


def _monitoring(data: Path, cluster: HACluster | None) -> Programs:
    """Prometheus with the alert rules, scraping every part; a Postgres exporter per node we run, and
    the node exporter (free disk space)."""
    programs: Programs = {}
    targets = [Target("api", f"127.0.0.1:{HttpSettings().port}"), Target("relay", f"127.0.0.1:{RELAY_METRICS_PORT}"),
               Target("sink", f"127.0.0.1:{SINK_METRICS_PORT}"), Target("deliver", f"127.0.0.1:{DELIVER_METRICS_PORT}"),
               Target("node", f"127.0.0.1:{NODE_EXPORTER_PORT}")]
    programs["node-exporter"] = (NodeExporter(NODE_EXPORTER_PORT).command(), "TERM", "", data)
    if not os.environ.get("LEDGER_KAFKA_BOOTSTRAP"):
        targets.append(Target("kafka", f"127.0.0.1:{BROKER_METRICS_PORT}"))
    databases: list[tuple[str, str]] = []  # (node name, the superuser's URL)
    if cluster is not None:
        databases = [(node.name, cluster.node_url(node)) for node in cluster.nodes]
        targets += [Target("patroni", f"127.0.0.1:{node.rest_port}", labels={"node": node.name})
                    for node in cluster.nodes]
        targets.append(Target("etcd", f"127.0.0.1:{cluster.etcd.port}"))
    elif not os.environ.get("LEDGER_DATABASE_URL"):
        databases = [("postgres", f"postgresql://{ROLE}@127.0.0.1:{POSTGRES_PORT}/{DATABASE}")]
    for index, (node, url) in enumerate(databases):
        exporter = PostgresExporter(POSTGRES_EXPORTER_PORT + index, url)
        name = "postgres-exporter" if cluster is None else f"postgres-exporter-{node}"
        programs[name] = (exporter.command(), "TERM", f'DATA_SOURCE_NAME="{exporter.data_source}"', data)
        targets.append(Target("postgres", exporter.address, labels={"node": node}))
    prometheus = Prometheus(MetricsSettings().prometheus_port, data / "prometheus", targets)
    prometheus.prepare()
    programs["prometheus"] = (prometheus.command(), "TERM", "", prometheus.folder)
    return programs


def _program_section(name: str, program: tuple[list[str], str, str, Path], logs: Path,
                     cluster: HACluster | None) -> list[str]:
    command, stop_signal, environment, workdir = program
    nodes = {node.name: node for node in cluster.nodes} if cluster is not None else {}
    # Their logs go to files, ours to the terminal.
    quiet = name in ("broker", "dynamodb", "etcd", "prometheus", "node-exporter") or name in nodes \
        or name.startswith("postgres-exporter")
    output = [f"stdout_logfile={logs / (name + '.log')}"] if quiet else [
        "stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0"]
    return [
        "",
        f"[program:{name}]",
        "command=" + " ".join(_quote(part) for part in command),
        f"directory={workdir}",
        "priority=" + ({"etcd": "1"}.get(name) or ("5" if name in nodes else "10" if quiet else "20")),
        # With the cluster, our services start once it has a primary and is migrated (main()).
        *(["autostart=false"] if cluster is not None and not quiet else []),
        *(_as_postgres(nodes[name]) if name in nodes else []),
        "autorestart=true",
        "startsecs=1",
        "startretries=100",
        f"stopsignal={stop_signal}",
        "stopwaitsecs=15",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        *output,
        *([f"environment={environment}"] if environment else []),
    ]


def _as_postgres(node: PatroniNode) -> list[str]:
    """Patroni (and so Postgres) runs as `postgres` when we are root: Postgres refuses root."""
    return ["user=postgres", "stopwaitsecs=40"] if os.geteuid() == 0 else ["stopwaitsecs=40"]


def _quote(part: str) -> str:
    return f'"{part}"' if " " in part else part


def main() -> int:
    if "--ha" in sys.argv[1:]:
        return main_ha()
    LOCAL.mkdir(exist_ok=True)
    postgres = None
    if not os.environ.get("LEDGER_DATABASE_URL"):
        postgres = LocalPostgres(LOCAL / "postgres", POSTGRES_PORT)
        print(f"starting Postgres on 127.0.0.1:{POSTGRES_PORT} (data in {postgres.data_dir})", flush=True)
        postgres.start()
    try:
        subprocess.run([str(BIN / "booking-ledger"), "migrate"], check=True)
        config = LOCAL / "supervisord.conf"
        config.write_text(supervisor_config(BIN))
        print(_banner(postgres.url if postgres else os.environ["LEDGER_DATABASE_URL"], config), flush=True)
        return supervise(config, stop_timeout=30)
    finally:
        # Finish the shutdown even if Ctrl-C is pressed again or stdout has gone (a pipe).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if postgres is not None:
            postgres.stop()
            _say("stopped Postgres")


def _banner(database_url: str, config: Path) -> str:
    http = HttpSettings()
    return (
        "\nbooking-ledger is starting (supervisord restarts any part that dies):\n"
        f"  API        http://{http.host}:{http.port}   (OpenAPI: /schema/openapi.json, metrics: /metrics)\n"
        f"  Postgres   {database_url}   (each service connects as its own role: {', '.join(roles.RUNTIME)})\n"
        f"  Kafka      {KafkaSettings().bootstrap}\n"
        f"  DynamoDB   {DynamoSettings().endpoint}\n"
        f"  metrics    API /metrics, relay http://127.0.0.1:{RELAY_METRICS_PORT}/metrics, "
        f"sink http://127.0.0.1:{SINK_METRICS_PORT}/metrics, deliver http://127.0.0.1:{DELIVER_METRICS_PORT}/metrics\n"
        f"  Prometheus http://127.0.0.1:{MetricsSettings().prometheus_port}/alerts   (rules: deploy/prometheus/)\n"
        f"  logs       {LOCAL / 'logs'}   status: .venv/bin/supervisorctl -c {config} status\n"
        "  make a key (in another shell):\n"
        "    .venv/bin/booking-ledger keys create --department hotel\n"
        "  Ctrl-C stops everything.\n"
    )


def main_ha() -> int:
    """`make run-ha`: supervisord runs etcd and the three Patroni nodes from the start (a killed node
    is restarted and rejoins); the services are started once the cluster has a primary with a
    synchronous standby and the schema is migrated."""
    LOCAL.mkdir(exist_ok=True)
    cluster = ha_cluster()
    backrest = archive_cluster(cluster, LOCAL / "backups" / "repo")  # WAL from the leader (deploy/RUNBOOK.md)
    cluster.prepare()
    os.environ["LEDGER_MIGRATE_DATABASE_URL"] = cluster.url  # the cluster's superuser: migrate SETs ROLE ledger_owner
    config = LOCAL / "supervisord-ha.conf"
    config.write_text(supervisor_config(BIN, cluster))
    print(f"starting etcd and three Patroni/Postgres nodes (data in {cluster.root})", flush=True)

    def start_services() -> None:
        leader = cluster.wait_ready(timeout=180)
        _backups_ready(backrest)
        subprocess.run([str(BIN / "booking-ledger"), "migrate"], check=True)
        subprocess.run([str(BIN / "supervisorctl"), "-c", str(config), "start", "api", "relay", "sink",
                        "deliver"],
                       check=True, stdout=subprocess.DEVNULL)
        print(_ha_banner(cluster, leader), flush=True)

    try:
        return supervise(config, stop_timeout=90, then=start_services)
    finally:
        for node in cluster.nodes:  # a postmaster whose Patroni was killed with it gone
            node.stop()
        _say("stopped")


def _backups_ready(backrest: PgBackRest) -> None:
    """The stanza (idempotent), once a primary runs: until then archive-push fails and Postgres
    keeps the WAL to push it later."""
    try:
        backrest.stanza_create()
        print(f"WAL is archived into {backrest.repo}; back up with:\n"
              f"  runuser -u postgres -- pgbackrest --config={backrest.config} --stanza={STANZA} backup --type=full",
              flush=True)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"WAL archiving is not ready (see deploy/RUNBOOK.md, Backup and restore): {error}", flush=True)


def _ha_banner(cluster: HACluster, leader: PatroniNode) -> str:
    nodes = ", ".join(f"{n.name} :{n.pg_port} (REST {n.rest})" for n in cluster.nodes)
    return (
        "\nbooking-ledger is running on a replicated Postgres (supervisord restarts any part that dies):\n"
        f"  API        http://127.0.0.1:{HttpSettings().port}\n"
        f"  Postgres   {cluster.url}   (as its superuser; each service uses its own role)\n"
        f"  nodes      {nodes}; leader now: {leader.name}\n"
        f"  cluster    curl -s {cluster.nodes[0].rest}/cluster   (Patroni's view: leader, sync_standby, replica)\n"
        f"             or the console's page: http://127.0.0.1:{HttpSettings().port}/console/cluster\n"
        f"  Prometheus http://127.0.0.1:{MetricsSettings().prometheus_port}/alerts   (rules: deploy/prometheus/)\n"
        f"  logs       {LOCAL / 'logs'}, {cluster.root}/node*/patroni.log\n"
        "  make a key (in another shell):\n"
        f"    LEDGER_DATABASE_URL='{roles.with_user(cluster.url, roles.KEYS)}' \\\n"
        "      .venv/bin/booking-ledger keys create --department hotel\n"
        "  Ctrl-C stops everything.\n"
    )


def supervise(config: Path, stop_timeout: float, then: Callable[[], None] = lambda: None) -> int:
    """supervisord on `config` in the foreground, and `then()` once it runs; its exit status, or 0
    after Ctrl-C. Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop it; when this returns it has
    stopped (kill -9 after `stop_timeout` seconds)."""
    # supervisord writes our workers' output into this pipe, and we copy it to the terminal:
    # if the terminal side goes away, supervisord still has a reader and keeps control.
    supervisor = subprocess.Popen(
        [str(BIN / "supervisord"), "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    threading.Thread(target=_forward, args=(supervisor.stdout,), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: supervisor.send_signal(signal.SIGTERM))
    try:
        then()
        return supervisor.wait()
    except KeyboardInterrupt:
        _stop(supervisor, signal.SIGINT, stop_timeout)  # (it got the terminal's Ctrl-C too; once more is harmless)
        return 0
    finally:
        # Finish the shutdown even if Ctrl-C is pressed again or stdout has gone (a pipe).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop(supervisor, signal.SIGTERM, stop_timeout)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def _forward(stream) -> None:
    for line in iter(stream.readline, b""):
        try:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        except OSError:
            pass


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"make run: {error}", file=sys.stderr)
        sys.exit(1)
