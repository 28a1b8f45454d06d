"""Alembic driven from Python: `booking-ledger migrate`, the test set-up and the readiness check."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

_INI = Path(__file__).with_name("alembic.ini")


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(_INI))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str | None = None, revision: str = "head", sql: bool = False,
            advance_positions: bool = False, advance_past: int | None = None) -> None:
    """Migrate the database at `database_url` (default: LEDGER_MIGRATE_DATABASE_URL) up to `revision`;
    with `sql`, print the SQL script to stdout instead (`revision` may be a range, FROM:TO). With
    `advance_positions`, after a restore, lift the position offset past the highest recorded
    position (migration 0010) instead of refusing; with `advance_past` too, past that position (the
    highest one the read store saw before a restore to an earlier moment)."""
    config = alembic_config(database_url)
    config.attributes["advance_positions"] = advance_positions
    config.attributes["advance_past"] = advance_past
    command.upgrade(config, revision, sql=sql)


def upgrade_script(revision: str = "head") -> str:
    """The SQL script of an upgrade to `revision` (or a range FROM:TO), made without a database:
    one transaction, run as ledger_owner, for `psql -v ON_ERROR_STOP=1`."""
    buffer = io.StringIO()
    config = Config(str(_INI), output_buffer=buffer)
    command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    """The revision the code expects the schema to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations have no head"
    return head
