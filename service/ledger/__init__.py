"""The write and read path of the ledger over Postgres (asyncpg). No web framework below here."""
