"""Alembic migrations: the only owner of the ledger's schema."""
