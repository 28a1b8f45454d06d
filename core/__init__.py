"""The small core shared by the ledger service and the CDC workers: settings and the event schema."""
