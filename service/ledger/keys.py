"""API keys: one department, a set of scopes; only a SHA-256 of the key is stored.

A key reads `bl_<id>_<secret>`: the id (16 hex digits) finds the row, the hash of the whole
key is compared in constant time. Keys carry 256 random bits, so a fast hash is enough: there
is no password to stretch.

Each API process keeps the key rows it has looked up (KeyCache), so a request costs no round
trip for its key. Every change to api_keys sends a NOTIFY (migration 0004) that empties the
cache of every process; while a process is not listening, it looks keys up on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.ledger.db import Tries, retrying, translate_errors
from service.ledger.notify import listen

SCOPES = ("read", "write", "write:any", "subscribe", "erase")
DEFAULT_SCOPES = ("read", "write")
# Checked with fullmatch: `$` with match() would let a final newline through.
DEPARTMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"bl_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")

INSERT_SQL = "INSERT INTO api_keys (id, department, scopes, key_hash) VALUES ($1, $2, $3, $4) RETURNING created_at"
LIST_SQL = "SELECT id, department, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
REVOKE_SQL = "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id"
LOOKUP_SQL = "SELECT id, department, scopes, key_hash, created_at, revoked_at FROM api_keys WHERE id = $1"
KEYS_CHANNEL = "ledger_api_keys"  # NOTIFY on every change to api_keys (migration 0004)


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
    if not DEPARTMENT.fullmatch(department):
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


@dataclass(frozen=True, slots=True)
class _Row:
    key: ApiKey
    key_hash: bytes
    revoked: bool
    loaded_at: float


class KeyCache:
    """The key rows one process has looked up, kept while a LISTEN connection hears every change.

    Any change to api_keys empties it. A lookup that started before a change is not stored
    (the generation moved on), so a revocation is never undone by a slow lookup. Rows are kept
    for at most `max_age` seconds in any case; only ids found in the table are kept.
    """

    def __init__(self, url: str, max_age: float = 60.0, ping_interval: float = 5.0,
                 on_listening: Callable[[bool], None] = lambda listening: None) -> None:
        """`on_listening` is told each time the LISTEN connection is put in place (True) or lost (False)."""
        self._url = url
        self._on_listening = on_listening
        self.max_age = max_age
        self._ping_interval = ping_interval
        self._rows: dict[str, _Row] = {}
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="api-key-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, key_id: str) -> _Row | None:
        row = self._rows.get(key_id)
        if row is None or not self._listening:
            return None
        if time.monotonic() - row.loaded_at > self.max_age:
            del self._rows[key_id]
            return None
        return row

    def generation(self) -> int:
        return self._generation

    def put(self, key_id: str, row: _Row, generation: int) -> None:
        if self._listening and generation == self._generation:
            self._rows[key_id] = row

    def clear(self) -> None:
        self._generation += 1
        self._rows.clear()

    async def _listen(self) -> None:
        await listen(self._url, KEYS_CHANNEL, name="booking-ledger-keys", on_notify=self.clear,
                     on_connect=self._listened, on_lost=self._unheard,
                     meanwhile="keys are looked up per request", ping_interval=self._ping_interval)

    def _listened(self) -> None:
        self.clear()  # changes made while nobody listened
        self._listening = True
        self._on_listening(True)

    def _unheard(self) -> None:
        self._listening = False
        self.clear()
        self._on_listening(False)


async def authenticate(pool: asyncpg.Pool, presented: str, cache: KeyCache | None = None,
                       deadline: float | None = None) -> ApiKey | None:
    """The active key `presented` is, or None for a malformed, unknown or revoked key; a look-up
    ends by `deadline` (the request's, service.ledger.db.request_deadline) whatever Postgres does."""
    match = _KEY.fullmatch(presented)
    if match is None:
        return None
    key_id = match.group(1)
    row = cache.get(key_id) if cache is not None else None
    if row is None:
        generation = cache.generation() if cache is not None else 0
        found = await retrying(pool, lambda conn: conn.fetchrow(LOOKUP_SQL, key_id), Tries(deadline=deadline))
        if found is None:
            return None
        row = _Row(ApiKey(found["id"], found["department"], frozenset(found["scopes"]), found["created_at"]),
                   found["key_hash"], found["revoked_at"] is not None, time.monotonic())
        if cache is not None:
            cache.put(key_id, row, generation)
    if not hmac.compare_digest(row.key_hash, _hash(presented)) or row.revoked:
        return None
    return row.key
