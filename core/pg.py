"""Connection set-up shared by every process that reads the ledger."""

from __future__ import annotations

import asyncpg
import msgspec


async def init_connection(conn: asyncpg.Connection) -> None:
    """json/jsonb travel as Python objects, encoded and decoded by msgspec."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=_json_text, decoder=msgspec.json.decode, format="text"
        )


async def connect(url: str, **options) -> asyncpg.Connection:
    """One connection with the ledger's codecs."""
    conn = await asyncpg.connect(url, **options)
    await init_connection(conn)
    return conn


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()
