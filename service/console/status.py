"""What the console shows about replication: the outbox, the relay's lease, the DynamoDB copy.

Everything here reads; nothing changes the ledger. The outbox and the lease come from Postgres,
the latest replicated version from the DynamoDB read store (layout: core/dynamodb.py).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from core import dynamodb
from core.lease import LEADER_LOCK_CLASSID, LEADER_LOCK_OBJID, RELAY_APPLICATION_PREFIX
from core.outbox import OUTBOX_BACKLOG_SQL
from core.settings import DynamoSettings
from service.ledger.db import connection

BOOKING_OUTBOX_SQL = "SELECT count(*) FROM outbox WHERE booking_code = $1"

# The session holding the relay's advisory lock in this database, if any relay leads.
LEADER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.backend_start
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid = $1::oid AND l.objid = $2::oid
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True)
class Outbox:
    backlog: int
    oldest_age_seconds: float | None  # None when empty


@dataclass(frozen=True)
class RelayLeader:
    pid: int  # the Postgres backend's pid
    application_name: str  # `booking-ledger-relay HOST PID` (core/lease.py)
    client_addr: str | None  # None for a Unix socket
    since: datetime  # when its connection opened

    @property
    def name(self) -> str:
        """`HOST, pid PID` of the relay process when its session says so, else what it says."""
        prefix, _, rest = self.application_name.partition(" ")
        host, _, pid = rest.rpartition(" ")
        if prefix == RELAY_APPLICATION_PREFIX and host and pid.isdigit():
            return f"{host}, pid {pid}"
        return self.application_name or "(a session without an application_name)"


async def outbox(pool: asyncpg.Pool) -> Outbox:
    async with connection(pool) as conn:
        row = await conn.fetchrow(OUTBOX_BACKLOG_SQL)
    return Outbox(row["backlog"], row["oldest_age"])


async def booking_outbox(pool: asyncpg.Pool, code: str) -> int:
    """How many of the booking's events still wait to be sent to Kafka."""
    async with connection(pool) as conn:
        return await conn.fetchval(BOOKING_OUTBOX_SQL, code)


async def relay_leader(pool: asyncpg.Pool) -> RelayLeader | None:
    """The relay holding the lease now, or None (no relay runs, or it is between leaders)."""
    async with connection(pool) as conn:
        row = await conn.fetchrow(LEADER_SQL, LEADER_LOCK_CLASSID, LEADER_LOCK_OBJID)
    if row is None:
        return None
    return RelayLeader(row["pid"], row["application_name"], row["client_addr"], row["backend_start"])


class ReadStoreUnavailable(Exception):
    """DynamoDB did not answer in time, or answered with an error."""


class ReadStore:
    """Short, bounded reads of the DynamoDB table, run in a thread so the event loop never waits.

    The client is made on first use (not at import or start-up) and reused.
    """

    def __init__(self, settings: DynamoSettings, timeout: float = 3.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def _dynamodb(self):
        with self._lock:
            if self._client is None:
                self._client = dynamodb.client(self.settings, connect_timeout=1, read_timeout=2, attempts=1)
            return self._client

    async def _call(self, work):
        try:
            return await asyncio.wait_for(asyncio.to_thread(work), self.timeout)
        except TimeoutError:
            raise ReadStoreUnavailable(f"no answer within {self.timeout:g} s") from None
        except Exception as error:  # botocore's errors, missing credentials, a refused connection
            raise ReadStoreUnavailable(type(error).__name__) from error

    async def latest_version(self, code: str) -> int | None:
        """The highest version of the booking in DynamoDB, None when it has no item yet."""

        def query() -> int | None:
            answer = self._dynamodb().query(**dynamodb.latest_version_query(self.settings.table, code))
            items = answer.get("Items", [])
            return int(items[0][dynamodb.SORT_KEY]["N"]) if items else None

        return await self._call(query)

    async def check(self) -> int | None:
        """Raise ReadStoreUnavailable unless the table answers; its approximate item count."""

        def describe() -> int | None:
            return self._dynamodb().describe_table(TableName=self.settings.table)["Table"].get("ItemCount")

        return await self._call(describe)
