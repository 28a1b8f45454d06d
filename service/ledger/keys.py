"""API keys: one department, a set of scopes; only a SHA-256 of the key is stored.

A key reads `bl_<id>_<secret>`: the id (16 hex digits) finds the row, the hash of the whole
key is compared in constant time. Keys carry 256 random bits, so a fast hash is enough: there
is no password to stretch.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.ledger.db import connection, translate_errors

SCOPES = ("read", "write", "write:any")
DEFAULT_SCOPES = ("read", "write")
DEPARTMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY = re.compile(r"^bl_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")

INSERT_SQL = "INSERT INTO api_keys (id, department, scopes, key_hash) VALUES ($1, $2, $3, $4) RETURNING created_at"
LIST_SQL = "SELECT id, department, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
REVOKE_SQL = "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id"
LOOKUP_SQL = "SELECT id, department, scopes, key_hash, created_at, revoked_at FROM api_keys WHERE id = $1"


class InvalidKeySpec(ValueError):
    """A department or scope list that a key cannot have."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    department: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidKeySpec(f"scopes must be a comma-separated subset of {','.join(SCOPES)}, got {text!r}")
    return scopes


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool, department: str, scopes: tuple[str, ...] = DEFAULT_SCOPES
) -> tuple[ApiKey, str]:
    """A new key for `department`; returns the stored record and the key itself (never stored)."""
    if not DEPARTMENT.match(department):
        raise InvalidKeySpec(f"department {department!r} must match {DEPARTMENT.pattern}")
    parse_scopes(",".join(scopes))
    key_id = secrets.token_hex(8)
    key = f"bl_{key_id}_{secrets.token_urlsafe(32)}"
    with translate_errors():
        created_at = await conn.fetchval(INSERT_SQL, key_id, department, list(scopes), _hash(key))
    return ApiKey(key_id, department, frozenset(scopes), created_at), key


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[ApiKey]:
    with translate_errors():
        rows = await conn.fetch(LIST_SQL)
    return [
        ApiKey(r["id"], r["department"], frozenset(r["scopes"]), r["created_at"], r["revoked_at"]) for r in rows
    ]


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> bool:
    """Revoke a key at once, for every API process; False when no active key has this id."""
    with translate_errors():
        return await conn.fetchval(REVOKE_SQL, key_id) is not None


async def authenticate(pool: asyncpg.Pool, presented: str) -> ApiKey | None:
    """The active key `presented` is, or None for a malformed, unknown or revoked key."""
    match = _KEY.match(presented)
    if match is None:
        return None
    async with connection(pool) as conn:
        row = await conn.fetchrow(LOOKUP_SQL, match.group(1))
    if row is None or not hmac.compare_digest(row["key_hash"], _hash(presented)):
        return None
    if row["revoked_at"] is not None:
        return None
    return ApiKey(row["id"], row["department"], frozenset(row["scopes"]), row["created_at"])
