"""Settings, one typed struct per concern, read from the environment once.

Every setting is optional; with none set, every command targets the local stack that
`make run` starts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import get_type_hints

from core import roles


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _env_str(name: str, default: str, doc: str):
    return field(default_factory=lambda: os.environ.get(name, default),
                 metadata={"env": name, "doc": doc, "default": default})


def _env_int(name: str, default: int, doc: str, minimum: int = 0):
    def read() -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    return field(default_factory=read, metadata={"env": name, "doc": doc, "default": default})


def _env_bool(name: str, doc: str):
    def read() -> bool:
        raw = os.environ.get(name, "").strip().lower()
        if raw in ("", "0", "false", "no"):
            return False
        if raw in ("1", "true", "yes"):
            return True
        raise SettingsError(f"{name} must be 1/true/yes or 0/false/no, got {raw!r}")

    return field(default_factory=read, metadata={"env": name, "doc": doc, "default": False})


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _env_str(
        "LEDGER_DATABASE_URL",
        roles.local_url(roles.API),
        "Postgres holding the ledger (the system of record), as this process's own role: neither a superuser "
        "nor the tables' owner (give each process its own). Unset: the local stack as the command's role "
        "(core/roles.py BY_COMMAND: ledger_api for `api` and `import`, ledger_relay for `relay`, ledger_reader "
        "for `replay`/`verify`, ledger_keys for `keys`, ledger_deliver for `deliver`). Set, `make run` starts no "
        "Postgres.",
    )
    migrate_url: str = _env_str(
        "LEDGER_MIGRATE_DATABASE_URL", "",
        "Postgres as a role that may SET ROLE ledger_owner (the owner itself, a member of it, or a superuser), "
        "for `migrate`. Unset: LEDGER_DATABASE_URL; with that unset too, the local stack as ledger_owner.",
    )
    allow_privileged_role: bool = _env_bool(
        "LEDGER_ALLOW_PRIVILEGED_ROLE",
        "1 lets the API run as a superuser or as the tables' owner (a test bench, never production); "
        "otherwise it refuses to start (exit 2) and readiness answers 503 naming the role.",
    )
    pool_size: int = _env_int("LEDGER_DB_POOL_SIZE", 16, "Connections per API worker process.", minimum=1)
    command_timeout: int = _env_int(
        "LEDGER_DB_TIMEOUT", 10, "Seconds a statement may take before the request answers 503.", minimum=1
    )
    retry_seconds: int = _env_int(
        "LEDGER_WRITE_RETRY_SECONDS", 20,
        "Seconds the API keeps retrying a request while the Postgres primary is unavailable (a failover), "
        "with the same event ids, before it answers 503; 0 = no retry. A request is answered within "
        "max(this, LEDGER_DB_TIMEOUT) from its arrival, its key's look-up included, whatever the fault "
        "(an append: 503 unknown_outcome when it may have been stored).",
    )
    retry_max_waiting: int = _env_int(
        "LEDGER_RETRY_MAX_WAITING", 256,
        "Requests per API worker that may wait for the primary at once; beyond it they answer 503 at once.",
        minimum=1,
    )
    batch_max_events: int = _env_int(
        "LEDGER_BATCH_MAX_EVENTS", 1024,
        "Group commit: at most this many events in one call to Postgres (an append larger than this goes alone); "
        "0 = no group commit (one call per append).",
    )
    batch_max_bytes: int = _env_int(
        "LEDGER_BATCH_MAX_BYTES", 4 * 1024 * 1024,
        "Group commit: at most about this many bytes of request bodies in one call to Postgres.", minimum=1,
    )

    @property
    def migration_url(self) -> str:
        """The URL `migrate` connects with (see `migrate_url`)."""
        if self.migrate_url:
            return self.migrate_url
        # One URL for everything works when its role may SET ROLE ledger_owner: migrations switch
        # to the owner themselves (migrations/env.py).
        return roles.local_url(roles.OWNER) if self.url == roles.local_url(roles.API) else self.url


@dataclass(frozen=True)
class HttpSettings:
    host: str = _env_str("LEDGER_HTTP_HOST", "127.0.0.1", "Address the API listens on.")
    port: int = _env_int("LEDGER_HTTP_PORT", 8000, "Port the API listens on.", minimum=1)
    workers: int = _env_int("LEDGER_HTTP_WORKERS", 2, "API worker processes.", minimum=1)
    rate_limit: int = _env_int(
        "LEDGER_RATE_LIMIT", 5000, "Requests per second per API key in each worker process; 0 turns it off."
    )
    body_timeout: int = _env_int(
        "LEDGER_HTTP_BODY_TIMEOUT", 15, "Seconds a request may take to send its whole body; then 408.", minimum=1
    )


@dataclass(frozen=True)
class StreamSettings:
    """GET /v1/events/stream (service/api/stream.py)."""

    max_per_key: int = _env_int(
        "LEDGER_STREAM_MAX_PER_KEY", 10, "Open event streams one API key may hold in each API worker; then 429.",
        minimum=1)
    max_open: int = _env_int("LEDGER_STREAM_MAX", 200, "Open event streams per API worker; then 429.", minimum=1)
    heartbeat_seconds: int = _env_int(
        "LEDGER_STREAM_HEARTBEAT_SECONDS", 15, "Seconds of silence after which a stream sends a comment line.",
        minimum=1)
    send_timeout: int = _env_int(
        "LEDGER_STREAM_SEND_TIMEOUT", 10,
        "Seconds a stream's client may leave the server unable to write before it is dropped (too slow).", minimum=1)
    max_bytes: int = _env_int(
        "LEDGER_STREAM_MAX_BYTES", 256 * 1024 * 1024,
        "Bytes one stream carries before it ends (the client resumes with Last-Event-ID).", minimum=1024)
    buffer_bytes: int = _env_int(
        "LEDGER_STREAM_BUFFER_BYTES", 16 * 1024 * 1024,
        "Recent events each API worker keeps for its live streams; a stream further behind reads Postgres.",
        minimum=1024)


# The Kafka broker `make run` starts.
LOCAL_KAFKA_BOOTSTRAP = "127.0.0.1:19092"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = _env_str(
        "LEDGER_KAFKA_BOOTSTRAP", LOCAL_KAFKA_BOOTSTRAP, "Kafka bootstrap servers. Set, `make run` starts no broker."
    )
    topic: str = _env_str("LEDGER_KAFKA_TOPIC", "booking-events", "Topic the relay writes and the sink reads.")
    partitions: int = _env_int(
        "LEDGER_KAFKA_PARTITIONS", 6, "Partitions of the topic when the relay or sink has to create it.", minimum=1
    )
    replication_factor: int = _env_int(
        "LEDGER_KAFKA_REPLICATION_FACTOR", 0,
        "Replicas of each partition when the relay creates a topic; 0 = the broker's default.replication.factor.",
    )
    dead_letter_topic: str = _env_str(
        "LEDGER_KAFKA_DEAD_LETTER_TOPIC", "booking-events.dead-letter", "Where the sink parks messages it cannot parse."
    )
    sink_group: str = _env_str(
        "LEDGER_SINK_GROUP", "booking-ledger-sink",
        "Consumer group of the sink: its offsets in the topic are committed there.",
    )
    commit_interval_ms: int = _env_int(
        "LEDGER_SINK_COMMIT_INTERVAL_MS", 1_000,
        "How often the sink commits the offsets of events DynamoDB accepted; a crashed sink reads at most "
        "this much again (harmless: its writes are idempotent).", minimum=1,
    )
    resend_seconds: int = _env_int(
        "LEDGER_RELAY_RESEND_SECONDS", 900,
        "When the relay has to create the topic (a new cluster, or the topic was deleted), events of this "
        "many seconds are sent again.",
    )


# The DynamoDB endpoint `make run` starts. LEDGER_DYNAMODB_ENDPOINT=aws selects AWS's own endpoints.
LOCAL_DYNAMODB_ENDPOINT = "http://127.0.0.1:18000"


@dataclass(frozen=True)
class DynamoSettings:
    endpoint: str = _env_str(
        "LEDGER_DYNAMODB_ENDPOINT", LOCAL_DYNAMODB_ENDPOINT, "DynamoDB endpoint URL; 'aws' for AWS's own endpoints. "
        "Set, `make run` starts no DynamoDB Local.",
    )
    table: str = _env_str("LEDGER_DYNAMODB_TABLE", "booking_events", "The company-wide read store of events.")
    region: str = _env_str(
        "AWS_REGION", "eu-west-1", "AWS region of the tables. Credentials come from the usual AWS chain "
        "(placeholders for a local endpoint).",
    )

    @property
    def endpoint_url(self) -> str | None:
        """The URL to give boto3, or None for AWS's own endpoints."""
        return None if self.endpoint.lower() == "aws" else self.endpoint


@dataclass(frozen=True)
class MetricsSettings:
    host: str = _env_str("LEDGER_METRICS_HOST", "127.0.0.1", "Address the relay's and sink's /metrics listen on.")
    relay_port: int = _env_int("LEDGER_RELAY_METRICS_PORT", 0, "Port of the relay's /metrics; 0 = not served.")
    sink_port: int = _env_int("LEDGER_SINK_METRICS_PORT", 0, "Port of the sink's /metrics; 0 = not served.")
    deliver_port: int = _env_int("LEDGER_DELIVER_METRICS_PORT", 0,
                                 "Port of the webhook worker's (`deliver`) /metrics; 0 = not served.")
    prometheus_port: int = _env_int(
        "LEDGER_PROMETHEUS_PORT", 9090,
        "Port (on 127.0.0.1) of the Prometheus that `make run` and `make run-ha` start, with the alert rules of "
        "deploy/prometheus/.", minimum=1,
    )


@dataclass(frozen=True)
class ClusterSettings:
    """What the console's cluster page reads (service/console/cluster.py); `make run-ha` sets both."""

    patroni_urls: str = _env_str(
        "LEDGER_PATRONI_URLS", "",
        "Patroni REST API base URLs of the ledger's Postgres nodes, comma-separated (e.g. "
        "`http://10.0.0.1:8008,http://10.0.0.2:8008`): the console's cluster page shows members, roles, "
        "timeline, lag, the synchronous standby and the last failover from them. Unset: no cluster page data.",
    )
    etcd_urls: str = _env_str(
        "LEDGER_ETCD_URLS", "",
        "etcd client URLs of Patroni's DCS, comma-separated: the cluster page shows each one's /health.",
    )

    @property
    def patroni(self) -> list[str]:
        return _urls(self.patroni_urls)

    @property
    def etcd(self) -> list[str]:
        return _urls(self.etcd_urls)


def _urls(text: str) -> list[str]:
    return [url.strip().rstrip("/") for url in text.split(",") if url.strip()]


@dataclass(frozen=True)
class WebhookSettings:
    """Subscriptions (webhooks): the API's checks of a subscription and the `deliver` worker."""

    allowed_hosts: str = _env_str(
        "LEDGER_WEBHOOK_ALLOWED_HOSTS", "",
        "Hosts (names or addresses, comma-separated) that a subscription may reach over plain `http` and at "
        "loopback, private or link-local addresses (tests, internal receivers). Any other receiver must be "
        "`https` at a public address. `make run` sets 127.0.0.1.",
    )
    retry_seconds: int = _env_int(
        "LEDGER_WEBHOOK_RETRY_SECONDS", 120,
        "Seconds a failing delivery is retried (capped exponential backoff with jitter) before its subscription "
        "pauses on that event.", minimum=1,
    )
    timeout_seconds: int = _env_int(
        "LEDGER_WEBHOOK_TIMEOUT_SECONDS", 10,
        "Seconds a receiver has to accept the connection, and again to answer a delivery; then it counts as "
        "failed.", minimum=1,
    )
    batch_max: int = _env_int(
        "LEDGER_WEBHOOK_BATCH_MAX", 100, "Events in one delivery at most (also at most about 1 MiB of JSON).",
        minimum=1,
    )
    max_per_department: int = _env_int(
        "LEDGER_WEBHOOK_MAX_PER_DEPARTMENT", 20, "Subscriptions one department may hold; then 409.", minimum=1,
    )

    @property
    def allowed(self) -> frozenset[str]:
        """The allowed hosts, lower case."""
        return frozenset(host.strip().lower().strip("[]") for host in self.allowed_hosts.split(",") if host.strip())


@dataclass(frozen=True)
class TracingSettings:
    """Trace context and spans (core/tracing.py)."""

    otlp_endpoint: str = _env_str(
        "LEDGER_OTLP_ENDPOINT", "",
        "OpenTelemetry collector (OTLP over HTTP, e.g. `http://127.0.0.1:4318`; a URL with a path is used as "
        "the traces URL) that receives the spans of the API request, the append call, the relay's send and the "
        "sink's write. Unset: no spans (the W3C trace id is still logged by every process and carried to Kafka).",
    )


@dataclass(frozen=True)
class AuditSettings:
    """Signed checkpoints (core/checkpoints.py)."""

    checkpoint_key_file: str = _env_str(
        "LEDGER_CHECKPOINT_KEY_FILE", "",
        "The Ed25519 private key (PEM, PKCS#8) that signs checkpoints: read by the relay and `booking-ledger "
        "checkpoint` only; `booking-ledger checkpoint --new-key` makes one. Unset: no checkpoints are made. "
        "`make run` keeps one in `.local/keys/`.",
    )
    checkpoint_seconds: int = _env_int(
        "LEDGER_CHECKPOINT_SECONDS", 60,
        "How often the relay's leader records a checkpoint over the events since the last one (when there are "
        "any) and sends the checkpoints whose events Kafka has to the topic.", minimum=1,
    )


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    dynamo: DynamoSettings = field(default_factory=DynamoSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables that would make a process read them back."""
        env = {}
        for group_field in fields(self):
            group = getattr(self, group_field.name)
            for setting in fields(group):
                env[setting.metadata["env"]] = str(getattr(group, setting.name))
        return env


def setting_names() -> set[str]:
    """Every environment variable the settings read."""
    groups = get_type_hints(Settings).values()
    return {f.metadata["env"] for group in groups for f in fields(group)}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    return Settings()


# Read before the settings exist (logging is set up first), so not a field of Settings.
# name -> (default, doc); a unit test checks that the code reads no other LEDGER_ variable.
READ_ELSEWHERE = {
    "LEDGER_LOG_FORMAT": (
        "json (console on a terminal)",
        "`json` or `console` (core/logs.py). `make run` shows readable lines; every API request is one line with "
        "its request_id (also returned as X-Request-ID), trace_id (/v1: W3C traceparent's, or a new one), method, "
        "path, status, duration, department and problem code, never the key; the relay and the sink log one line "
        "per event sent / written, with its trace_id.",
    ),
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """docs/settings.md: every setting with its variable, default and doc, one table per concern."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated by `python -m core.settings --markdown > docs/settings.md`; do not edit by hand. -->",
        "",
        "Environment variables, all optional: with none set, every command targets the local stack that",
        "`make run` starts. Each process reads them once (`core.settings.get_settings()`).",
    ]
    for group_name, group in get_type_hints(Settings).items():
        lines += ["", f"## {group_name}", "", "| variable | default | |", "|---|---|---|"]
        for setting in fields(group):
            default = setting.metadata["default"]
            shown = "unset" if default == "" else f"`{int(default) if isinstance(default, bool) else default}`"
            lines.append(f"| `{setting.metadata['env']}` | {_cell(shown)} | {_cell(setting.metadata['doc'])} |")
    lines += ["", "## read elsewhere", "", "| variable | default | |", "|---|---|---|"]
    for name, (default, doc) in READ_ELSEWHERE.items():
        lines.append(f"| `{name}` | {_cell(default)} | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m core.settings --markdown")
    sys.stdout.write(markdown())
