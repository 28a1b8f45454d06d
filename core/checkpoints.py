"""Signed checkpoints (migration 0017): a Merkle root over the events recorded since the last one,
in position order, signed with Ed25519; each checkpoint names the one before it, so that none can
be dropped or changed unseen. docs/api.md ("Checkpoints") says it for verifiers.

A checkpoint covers the events with after_position < position <= through_position, every one of them
below the feed's fence when it was made (no transaction still running can add one there later); the
next one starts where it ended. What is signed is its statement, eight lines of UTF-8, each ended by
a line feed: `booking-ledger checkpoint v1`, seq, after_position, through_position, events, root
(hex), previous (hex SHA-256 of the previous checkpoint's statement; 64 zeros for seq 1),
created_at (microseconds since 1970-01-01T00:00:00Z).

The signer is whoever holds the key file (LEDGER_CHECKPOINT_KEY_FILE): the relay, every
LEDGER_CHECKPOINT_SECONDS, and `booking-ledger checkpoint` on demand.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core import merkle
from core.chain import microseconds

TAG = "booking-ledger checkpoint v1"
NO_PREVIOUS = bytes(32)
MAX_EVENTS = 65_536  # per checkpoint; a longer stretch becomes several
# On the topic: a key no booking code can be, and a header naming the kind of message.
KAFKA_KEY = b"~checkpoint"
KAFKA_HEADER = ("ledger-message", b"checkpoint")
# Only one checkpoint is made at a time (the relay's timer and the command may meet).
CHECKPOINT_LOCK = 0x636B7074  # "ckpt"

CHECKPOINT_COLUMNS = ("seq, after_position, through_position, events, root, previous, key_id, public_key, "
                      "signature, created_at")
LAST_SQL = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY seq DESC LIMIT 1"
# The events after a position, in position order, below the fence (the arithmetic of ledger_feed_fence).
NEW_EVENTS_SQL = """
SELECT position, hash FROM events
 WHERE position > $1
   AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                   + (SELECT xid_offset FROM ledger_position_offset)) * 65536
 ORDER BY position
 LIMIT $2
"""
INSERT_SQL = f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
PAGE_SQL = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2"
COVERING_SQL = f"""SELECT {CHECKPOINT_COLUMNS} FROM checkpoints
 WHERE after_position < $1 AND through_position >= $1"""
LEAVES_SQL = "SELECT position, hash FROM events WHERE position > $1 AND position <= $2 ORDER BY position"


class Checkpoint(msgspec.Struct, frozen=True):
    """A checkpoint as the API answers it and the topic carries it (bytes as lowercase hex)."""

    seq: int
    after_position: int
    through_position: int
    events: int
    root: str
    previous: str
    created_at: datetime
    key_id: str
    public_key: str  # the raw 32-byte Ed25519 key, hex
    signature: str  # over `statement()`, hex

    def statement(self) -> bytes:
        lines = (TAG, str(self.seq), str(self.after_position), str(self.through_position), str(self.events),
                 self.root, self.previous, microseconds(self.created_at))
        return "".join(f"{line}\n" for line in lines).encode()

    def digest(self) -> bytes:
        """What the next checkpoint names as `previous`."""
        return hashlib.sha256(self.statement()).digest()

    def signed_by(self, public_key: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(bytes.fromhex(self.signature), self.statement())
        except (InvalidSignature, ValueError):
            return False
        return True


def from_row(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(seq=row["seq"], after_position=row["after_position"], through_position=row["through_position"],
                      events=row["events"], root=row["root"].hex(), previous=row["previous"].hex(),
                      created_at=row["created_at"], key_id=row["key_id"], public_key=row["public_key"].hex(),
                      signature=row["signature"].hex())


def key_id(public_key: bytes) -> str:
    """A key's name: the first 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @classmethod
    def load(cls, path: Path) -> Signer:
        """The key in `path` (PEM, PKCS#8, unencrypted). Raises OSError or ValueError."""
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def create(cls, path: Path) -> Signer:
        """A new key, written to `path` (which must not exist), readable by its owner only."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        return cls(key)

    def sign(self, statement: bytes) -> bytes:
        return self.private_key.sign(statement)


async def record(conn: asyncpg.Connection, signer: Signer, most: int = 16) -> list[Checkpoint]:
    """Checkpoints over the events recorded since the last one and below the fence (none when there
    is no such event), in one transaction: at most `most` of them (MAX_EVENTS events each), so that a
    long stretch (the first run over a large ledger) is covered a part per call."""
    made: list[Checkpoint] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHECKPOINT_LOCK)
        last = await conn.fetchrow(LAST_SQL)
        previous = from_row(last) if last is not None else None
        while True:
            after = previous.through_position if previous is not None else 0
            rows = await conn.fetch(NEW_EVENTS_SQL, after, MAX_EVENTS)
            if not rows:
                return made
            leaves = [merkle.leaf(row["position"], row["hash"]) for row in rows]
            created_at = await conn.fetchval("SELECT clock_timestamp()")
            unsigned = Checkpoint(
                seq=previous.seq + 1 if previous is not None else 1, after_position=after,
                through_position=rows[-1]["position"], events=len(rows), root=merkle.root(leaves).hex(),
                previous=(previous.digest() if previous is not None else NO_PREVIOUS).hex(),
                created_at=created_at, key_id=signer.key_id, public_key=signer.public_key.hex(), signature="",
            )
            checkpoint = msgspec.structs.replace(unsigned, signature=signer.sign(unsigned.statement()).hex())
            await conn.execute(INSERT_SQL, checkpoint.seq, checkpoint.after_position, checkpoint.through_position,
                               checkpoint.events, bytes.fromhex(checkpoint.root), bytes.fromhex(checkpoint.previous),
                               checkpoint.key_id, signer.public_key, bytes.fromhex(checkpoint.signature),
                               checkpoint.created_at)
            made.append(checkpoint)
            previous = checkpoint
            if len(rows) < MAX_EVENTS or len(made) >= most:
                return made


class Inclusion(msgspec.Struct, frozen=True):
    """Event `position` is leaf `index` of checkpoint `seq`: merkle.included(index, events, leaf, path, root)."""

    seq: int
    position: int
    hash: str  # the event's chain hash
    leaf: str  # SHA-256(0x00 || position as 8 bytes big-endian || hash)
    index: int
    path: list[str]  # sibling roots from the leaf up


async def inclusion(conn: asyncpg.Connection, position: int) -> Inclusion | None:
    """The inclusion proof of the event at `position` in the checkpoint that covers it (None: no
    checkpoint covers it yet, or no event has that position)."""
    row = await conn.fetchrow(COVERING_SQL, position)
    if row is None:
        return None
    events = await conn.fetch(LEAVES_SQL, row["after_position"], row["through_position"])
    index = next((i for i, event in enumerate(events) if event["position"] == position), None)
    if index is None:
        return None
    leaves = [merkle.leaf(event["position"], event["hash"]) for event in events]
    return Inclusion(seq=row["seq"], position=position, hash=events[index]["hash"].hex(), leaf=leaves[index].hex(),
                     index=index, path=[step.hex() for step in merkle.path(index, leaves)])
