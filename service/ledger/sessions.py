"""The console's sessions: a random id in the cookie, its SHA-256 in console_sessions (migration 0005).

A session is as good as its key: it is refused once the key is revoked (or deleted), after its
expiry, and after sign-out, which deletes it. Each check reads Postgres (a person clicks: a page
is a few queries), so a revocation holds at once in every API process.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import asyncpg

from service.ledger.db import connection
from service.ledger.keys import ApiKey

CREATE_SQL = """
INSERT INTO console_sessions (id_hash, key_id, expires_at) VALUES ($1, $2, now() + $3::interval)
"""
# Expired sessions are removed at each sign-in; the index on expires_at keeps that cheap.
PURGE_SQL = "DELETE FROM console_sessions WHERE expires_at <= now()"
LOOKUP_SQL = """
SELECT k.id, k.department, k.scopes, k.created_at
  FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
 WHERE s.id_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL
"""
DELETE_SQL = "DELETE FROM console_sessions WHERE id_hash = $1"


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def start(pool: asyncpg.Pool, key: ApiKey, lifetime: timedelta) -> str:
    """A new session for `key`, valid for `lifetime`; returns its id (never stored)."""
    session_id = secrets.token_urlsafe(32)
    async with connection(pool) as conn, conn.transaction():
        await conn.execute(PURGE_SQL)
        await conn.execute(CREATE_SQL, _hash(session_id), key.id, lifetime)
    return session_id


async def key_of(pool: asyncpg.Pool, session_id: str) -> ApiKey | None:
    """The active key of a live session, or None (unknown, expired, signed out, key revoked)."""
    if not session_id or len(session_id) > 64:
        return None
    async with connection(pool) as conn:
        row = await conn.fetchrow(LOOKUP_SQL, _hash(session_id))
    if row is None:
        return None
    return ApiKey(row["id"], row["department"], frozenset(row["scopes"]), row["created_at"])


async def end(pool: asyncpg.Pool, session_id: str) -> None:
    """Sign out: the session is deleted."""
    if session_id:
        async with connection(pool) as conn:
            await conn.execute(DELETE_SQL, _hash(session_id))
