"""One leader at a time for the daemons that must not run twice (the relay, the webhooks' worker).

The leader holds a Postgres session advisory lock on its own connection to the primary; a standby
tries for the lock every second and takes over within a second or two of the leader's connection
dying. The lease is taken only on a primary: advisory locks are not replicated, so after a failover
it is free on the new primary, and the sessions on the old one end when Patroni demotes it (a
restart). One check per session is enough, since a server never turns from primary into standby
without a restart. Keepalives make Postgres notice a dead leader's host within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from cdc.backoff import Backoff
from core.pg import connect, is_transient

CAMPAIGN_SQL = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_try_advisory_lock($1) END"

# The leader's lock lives as long as its session. If the leader's host dies without closing the
# socket, Postgres must notice within seconds, not after the OS default of two hours.
DEAD_PEER_DETECTION = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


@dataclass
class Lease:
    """The leadership of one kind of daemon: `name` in its log lines, `lock` the advisory lock's key,
    `peers` what its log calls the others, `changed` told of each change (metrics)."""

    name: str
    lock: int
    url: str
    log: logging.Logger
    application_name: Callable[[], str]
    changed: Callable[[bool], None]
    peers: str = "worker"
    is_leader: bool = False

    async def run(self, stop: asyncio.Event, lead: Callable[[asyncpg.Connection, asyncio.Event], Awaitable[None]]
                  ) -> None:
        """Campaign, and run `lead` with the lease's connection while leader, until `stop` is set."""
        backoff = Backoff(self.log)
        while not stop.is_set():
            try:
                conn = await connect(self.url, timeout=5, command_timeout=30,
                                     server_settings={**DEAD_PEER_DETECTION,
                                                      "application_name": self.application_name()})
            except Exception as error:
                if not isinstance(error, asyncpg.PostgresError) and not is_transient(error):
                    raise
                # Not transient (a missing schema, a refused role): wait and try again all the same,
                # saying so; this is a daemon and an operator may fix it meanwhile.
                await pause(stop, backoff.failed(f"{self.name} cannot reach Postgres: %r", error))
                continue
            backoff.succeeded(f"{self.name} reaches Postgres again")
            try:
                if await self._campaign(conn, stop):
                    await lead(conn, stop)
            except Exception as error:
                if not isinstance(error, asyncpg.PostgresError) and not is_transient(error):
                    raise
                if is_transient(error):
                    self.log.warning("%s lost its Postgres connection (and with it any leadership): %r",
                                     self.name, error)
                else:
                    self.log.error("%s failed on a Postgres error (leadership released): %r", self.name, error)
                await pause(stop, 0.5)
            finally:
                if self.is_leader:
                    self.log.info("%s leadership released", self.name)
                self._set(False)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)

    async def _campaign(self, conn: asyncpg.Connection, stop: asyncio.Event) -> bool:
        announced = False
        while not stop.is_set():
            taken = await conn.fetchval(CAMPAIGN_SQL, self.lock)
            if taken is None:
                self.log.warning("%s connected to a standby (read-only) server: looking for the primary", self.name)
                await pause(stop, 0.5)
                return False
            if taken:
                self._set(True)
                self.log.info("%s is the leader", self.name)
                return True
            if not announced:
                self.log.info("%s is standby: another %s holds the lease", self.name, self.peers)
                announced = True
            await pause(stop, 1.0)
        return False

    def _set(self, leading: bool) -> None:
        self.is_leader = leading
        self.changed(leading)


async def pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep up to `seconds`, returning early when `stop` (or `wake`) is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
