"""The HTTP face of the ledger: app factory, routes, request/response schemas, error mapping."""
