"""A booking's hash chain (migration 0016) and the signed checkpoints (0017) as the ledger holds them
(docs/api.md, "Audit")."""

from __future__ import annotations

import asyncpg
import msgspec

from core import checkpoints
from core.chain import GENESIS, LINK_COLUMNS, Link
from core.checkpoints import Checkpoint, Inclusion
from service.ledger.db import retrying
from service.ledger.errors import BookingNotFound

# The booking's head, the hash of the event before the page, and the page's links. At most
# `limit` links; a page of the largest events (256 KiB of data each) stays within a few MiB.
PROOF_SQL = f"""
SELECT b.version AS booking_version, b.head,
       (SELECT p.hash FROM events p WHERE p.booking_code = b.code AND p.version = $2 - 1) AS previous,
       e.*
  FROM bookings b
  LEFT JOIN LATERAL (SELECT {LINK_COLUMNS} FROM events
                      WHERE booking_code = b.code AND version >= $2
                      ORDER BY version LIMIT $3) e ON true
 WHERE b.code = $1
"""


class ProofLink(msgspec.Struct, frozen=True):
    """One event of the chain: its hash = SHA-256(the hash before it || canonical), hex."""

    version: int
    position: int
    event_id: str
    hash: str
    canonical: str  # the canonical form (UTF-8 text), whose twelve lines name what the hash covers


class Proof(msgspec.Struct, frozen=True):
    booking_code: str
    version: int  # the booking's version now
    head: str  # the hash of its latest event
    previous: str | None  # the hash before from_version (64 zeros for 1; null past the last version + 1)
    links: list[ProofLink]
    next_from_version: int | None


async def read_proof(pool: asyncpg.Pool, code: str, from_version: int, limit: int) -> Proof:
    """The chain of booking `code` from `from_version` on (at most `limit` links)."""
    rows = await retrying(pool, lambda conn: conn.fetch(PROOF_SQL, code, from_version, limit))
    if not rows:
        raise BookingNotFound("no booking with this code")
    first = rows[0]
    links = [Link.from_row(row) for row in rows if row["event_id"] is not None]
    last = links[-1].version if links else from_version - 1
    previous: bytes | None = GENESIS if from_version == 1 else first["previous"]
    return Proof(
        booking_code=code,
        version=first["booking_version"],
        head=(first["head"] or b"").hex(),
        previous=None if previous is None else previous.hex(),
        links=[ProofLink(link.version, link.position, str(link.event_id), (link.hash or b"").hex(),
                         link.canonical().decode()) for link in links],
        next_from_version=last + 1 if last < first["booking_version"] else None,
    )


class SigningKey(msgspec.Struct, frozen=True):
    key_id: str
    public_key: str  # raw 32-byte Ed25519 public key, hex
    first_seq: int  # the checkpoints it signed, first and last
    last_seq: int


class SigningKeys(msgspec.Struct, frozen=True):
    algorithm: str
    current: str | None  # the key of the latest checkpoint (null before the first)
    keys: list[SigningKey]


KEYS_SQL = """
SELECT key_id, public_key, min(seq) AS first_seq, max(seq) AS last_seq FROM checkpoints
 GROUP BY key_id, public_key ORDER BY max(seq)
"""


async def signing_keys(pool: asyncpg.Pool) -> SigningKeys:
    """The keys that signed checkpoints, the current one last."""
    rows = await retrying(pool, lambda conn: conn.fetch(KEYS_SQL))
    keys = [SigningKey(r["key_id"], r["public_key"].hex(), r["first_seq"], r["last_seq"]) for r in rows]
    return SigningKeys(algorithm="Ed25519", current=keys[-1].key_id if keys else None, keys=keys)


class CheckpointsPage(msgspec.Struct, frozen=True):
    checkpoints: list[Checkpoint]
    next_after: int  # the seq to ask after next
    inclusion: Inclusion | None = None  # asked with `prove`: the event's proof (null: not covered yet)


async def read_checkpoints(pool: asyncpg.Pool, after: int, limit: int, prove: int | None) -> CheckpointsPage:
    """Checkpoints after seq `after` (at most `limit`), and with `prove`, the inclusion proof of the event
    at that position."""

    async def read(conn: asyncpg.Connection) -> CheckpointsPage:
        rows = await conn.fetch(checkpoints.PAGE_SQL, after, limit)
        found = [checkpoints.from_row(row) for row in rows]
        inclusion = await checkpoints.inclusion(conn, prove) if prove is not None else None
        return CheckpointsPage(found, found[-1].seq if found else after, inclusion)

    return await retrying(pool, read)
