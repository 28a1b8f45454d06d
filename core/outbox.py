"""The outbox: what the ledger still has to send downstream, as the API, the relay and the console see it."""

# NOTIFY channel that wakes the relay after appends commit (a hint; the relay also polls).
OUTBOX_CHANNEL = "ledger_outbox"

# The outbox's size and the age in seconds of its oldest event (NULL when it is empty).
OUTBOX_BACKLOG_SQL = """
SELECT count(*) AS backlog, extract(epoch FROM now() - min(e.recorded_at))::float8 AS oldest_age
  FROM outbox o JOIN events e ON e.position = o.position
"""
