"""The relay's lease: a Postgres session advisory lock held by the leading relay's connection.

The relay takes it (cdc/relay.py); the console asks Postgres who holds it
(service/console/status.py), and names the holder by its session's application_name.
"""

from __future__ import annotations

import os
import socket

LEADER_LOCK = int.from_bytes(b"bl-relay", "big")  # advisory lock key of the relay leader

# pg_locks shows a bigint advisory key as two 32-bit halves, with objsubid 1.
LEADER_LOCK_CLASSID, LEADER_LOCK_OBJID = LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF

RELAY_APPLICATION_PREFIX = "booking-ledger-relay"


def relay_identity() -> tuple[str, int]:
    """This process's host name and pid: who the relay says it is, in metrics and in Postgres."""
    return socket.gethostname(), os.getpid()


def relay_application_name() -> str:
    """The application_name of a relay's connection: `booking-ledger-relay HOST PID`, at most
    63 bytes (Postgres truncates longer names)."""
    host, pid = relay_identity()
    return f"{RELAY_APPLICATION_PREFIX} {host[:32]} {pid}"
