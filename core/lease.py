"""The relay's lease: a Postgres session advisory lock held by the leading relay's connection.

The relay takes it (cdc/relay.py); the console asks Postgres who holds it
(service/console/status.py), and names the holder by its session's application_name.
"""

from __future__ import annotations

import os
import socket
import time

LEADER_LOCK = int.from_bytes(b"bl-relay", "big")  # advisory lock key of the relay leader
DELIVER_LOCK = int.from_bytes(b"bl-deliv", "big")  # advisory lock key of the webhook worker's leader

# pg_locks shows a bigint advisory key as two 32-bit halves, with objsubid 1.
LEADER_LOCK_CLASSID, LEADER_LOCK_OBJID = LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF

RELAY_APPLICATION_PREFIX = "booking-ledger-relay"


def relay_identity() -> tuple[str, int]:
    """This process's host name and pid: who the relay says it is, in metrics and in Postgres."""
    return socket.gethostname(), os.getpid()


def relay_application_name() -> str:
    """The application_name of a relay's connection: `booking-ledger-relay HOST PID SINCE`, SINCE
    the connection's start in Unix seconds, at most 63 bytes (Postgres truncates longer names).

    The console reads who leads, and since when, from it: pg_stat_activity shows another role's
    sessions without their start time or address (those need pg_read_all_stats, which would let the
    API read every session's query text), but with their application_name."""
    host, pid = relay_identity()
    return f"{RELAY_APPLICATION_PREFIX} {host[:22]} {pid} {int(time.time())}"
