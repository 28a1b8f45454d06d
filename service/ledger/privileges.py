"""Whether a connection's role has more power than a ledger process should: the API's guard.

The processes connect as roles that own nothing and hold only their grants (core/roles.py,
migrations/versions/0008_roles.py). A superuser, or a role with the privileges of the tables'
owner, could drop or rewrite the ledger through any bug or injection: the API refuses to start as
one, and its readiness answers 503, unless LEDGER_ALLOW_PRIVILEGED_ROLE says otherwise.
"""

from __future__ import annotations

import asyncpg

from core import roles

# pg_has_role(..., 'USAGE'): the role has the owner's privileges (it is the owner, or inherits them).
PRIVILEGE_SQL = """
SELECT current_user AS role, r.rolsuper AS superuser,
       coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false) AS owner
  FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('events')
 WHERE r.rolname = current_user
"""


async def privileged_role(conn: asyncpg.Connection, timeout: float | None = None) -> str | None:
    """Why the connection's role is too powerful for the API, or None when it is not."""
    row = await conn.fetchrow(PRIVILEGE_SQL, timeout=timeout)
    if row is None:
        return None
    if row["superuser"]:
        what = "a superuser"
    elif row["owner"]:
        what = "the owner of the ledger's tables (or a member of it)"
    else:
        return None
    return (f"the API connects as role {row['role']!r}, {what}: connect as {roles.API} (LEDGER_DATABASE_URL; "
            "deploy/roles.sql makes it), or set LEDGER_ALLOW_PRIVILEGED_ROLE=1 where that is intended")


POSITION_CHECK_SQL = "SELECT highest, next_lowest FROM ledger_position_check()"


async def positions_behind(conn: asyncpg.Connection, timeout: float | None = None) -> str | None:
    """Why new positions could sort below recorded ones (the transaction counter is behind, as
    after a restore from pg_dump), or None when the next append sorts above every event."""
    highest, next_lowest = await conn.fetchrow(POSITION_CHECK_SQL, timeout=timeout)
    if highest is None or next_lowest > highest:
        return None
    return (f"positions would go backwards: the highest recorded is {highest}, the next append would get "
            f"about {next_lowest} (the transaction counter is behind, as after a restore from pg_dump or a "
            "logical-replication upgrade); readers resuming with after= would skip new events. Appends are "
            "refused until `booking-ledger migrate --advance-positions` moves new positions past it "
            "(deploy/RUNBOOK.md)")
