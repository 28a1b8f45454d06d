"""What the console shows about the replicated Postgres: Patroni's members and history, etcd's health.

Read from Patroni's REST API (`GET /cluster`, `GET /history`) at LEDGER_PATRONI_URLS and from etcd's
`GET /health` at LEDGER_ETCD_URLS; nothing here changes anything. Every call is a short GET with its
own timeout, run in a thread, all of them at once: a node that does not answer costs the page one
timeout, not one per question. The URLs come from the settings only, never from a request.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.settings import ClusterSettings

TIMEOUT = 2.0  # seconds per GET
MAX_BODY = 256 * 1024  # bytes read from one answer


@dataclass(frozen=True)
class Member:
    name: str
    role: str  # leader, sync_standby, replica (or standby_leader)
    state: str  # running, streaming, starting, stopped, ...
    host: str
    port: int | None
    timeline: int | None
    lag_bytes: int | None  # replicas: WAL bytes behind the leader, None when Patroni does not know

    @property
    def synchronous(self) -> bool:
        return self.role == "sync_standby"

    @property
    def leader(self) -> bool:
        return self.role in ("leader", "standby_leader")


@dataclass(frozen=True)
class Failover:
    """The last timeline change (a failover or a switchover), from Patroni's history."""

    timeline: int  # the timeline it ended (the new one is timeline + 1)
    at: datetime | None
    new_leader: str | None
    reason: str


@dataclass(frozen=True)
class EtcdMember:
    url: str
    healthy: bool
    detail: str


@dataclass
class ClusterView:
    configured: bool  # LEDGER_PATRONI_URLS is set
    members: list[Member] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # Patroni URLs that did not answer, and why
    last_failover: Failover | None = None
    etcd: list[EtcdMember] = field(default_factory=list)

    @property
    def timeline(self) -> int | None:
        leaders = [m.timeline for m in self.members if m.leader]
        return leaders[0] if leaders else None

    @property
    def synchronous(self) -> list[str]:
        return [m.name for m in self.members if m.synchronous]


def _get(url: str) -> Any:
    """The JSON of a GET, raising OSError/ValueError on anything else. Patroni answers /health-like
    paths with 503 and a JSON body on purpose; those bodies are taken too."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 (URLs from settings)
            return json.loads(answer.read(MAX_BODY))
    except urllib.error.HTTPError as error:
        with error:
            return json.loads(error.read(MAX_BODY))


async def _fetch(url: str) -> tuple[Any, str | None]:
    """(the JSON at url, None) or (None, why not)."""
    try:
        return await asyncio.to_thread(_get, url), None
    except (OSError, ValueError) as error:  # refused, timed out, not JSON
        reason = getattr(error, "reason", None) or error
        return None, str(reason) if str(reason) else type(error).__name__


def _member(raw: dict[str, Any]) -> Member:
    lag = raw.get("lag")
    return Member(name=str(raw.get("name", "?")), role=str(raw.get("role", "?")), state=str(raw.get("state", "?")),
                  host=str(raw.get("host", "")), port=raw.get("port") if isinstance(raw.get("port"), int) else None,
                  timeline=raw.get("timeline") if isinstance(raw.get("timeline"), int) else None,
                  lag_bytes=lag if isinstance(lag, int) else None)


def _failover(history: Any) -> Failover | None:
    """The last entry of Patroni's /history: [timeline, lsn, reason, timestamp, new_leader]."""
    if not isinstance(history, list) or not history or not isinstance(history[-1], list):
        return None
    entry = history[-1] + [None] * 5
    try:
        at = datetime.fromisoformat(entry[3]).astimezone(UTC) if isinstance(entry[3], str) else None
    except ValueError:
        at = None
    return Failover(timeline=int(entry[0]), at=at, new_leader=entry[4] if isinstance(entry[4], str) else None,
                    reason=str(entry[2] or ""))


async def read(settings: ClusterSettings) -> ClusterView:
    """The cluster as Patroni and etcd say it is now (empty and not `configured` without Patroni URLs)."""
    patroni, etcd = settings.patroni, settings.etcd
    if not patroni:
        return ClusterView(configured=False)
    answers = await asyncio.gather(*(_fetch(f"{url}/cluster") for url in patroni),
                                   *(_fetch(f"{url}/history") for url in patroni),
                                   *(_fetch(f"{url}/health") for url in etcd))
    n = len(patroni)
    clusters, histories, healths = answers[:n], answers[n:2 * n], answers[2 * n:]
    view = ClusterView(configured=True)
    view.unreachable = [f"{url} ({error})" for url, (_, error) in zip(patroni, clusters, strict=True) if error]
    found = next((body for body, _ in clusters if isinstance(body, dict)), None)
    if found is not None:
        view.members = [_member(m) for m in found.get("members", []) if isinstance(m, dict)]
    # Every node keeps the same history (it is in the DCS); the longest one answered is the newest.
    known = [body for body, _ in histories if isinstance(body, list)]
    view.last_failover = _failover(max(known, key=len)) if known else None
    for url, (body, error) in zip(etcd, healths, strict=True):
        if error:
            view.etcd.append(EtcdMember(url, False, error))
        else:
            healthy = isinstance(body, dict) and str(body.get("health")) == "true"
            view.etcd.append(EtcdMember(url, healthy, "" if healthy else str(body.get("reason") or body)))
    return view
