"""The ledger service: the HTTP API and the write and read path over Postgres."""
