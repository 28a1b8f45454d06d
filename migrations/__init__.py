"""Alembic migrations: the only owner of the ledger's schema."""

from pathlib import Path

SQL = Path(__file__).resolve().parent / "sql"


def function_sql(name: str, revision: str) -> str:
    """The SQL that migration `revision` installs for `name`: `sql/<name>.<revision>.sql` while it is the
    version in force, its frozen copy in `sql/history/` once a later migration replaced it."""
    live = SQL / f"{name}.{revision}.sql"
    return (live if live.exists() else SQL / "history" / live.name).read_text()
