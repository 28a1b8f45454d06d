"""A hash chain per booking: every event carries `hash`, every booking its head.

hash = SHA-256(hash of the booking's previous event, or 32 zero bytes for version 1 || the event's
canonical form), the canonical form being ledger_event_canonical()'s bytes (docs/api.md, "The hash
chain", says it in words). bookings.head is the hash of the booking's latest event. The chain is
computed here for the events already recorded (one pass over the table, the events of each booking
in version order: a window running the chain step as an aggregate), and from now on in the append
transaction by ledger_advance_booking, which reads the head under the booking's lock, hashes the
append's events (their positions are known: the transaction id, taken there once every lock is
held, and their index in the call) and writes the new head in the same write of the booking row that
moves its version on; ledger_write_events stores the hashes with the events. The chain covers the
position, so what a checkpoint or a downstream copy says about positions is checked too.

The answer of ledger_append_batch carries each stored event's hash (ledger_answer gets the column;
the parts that answer for it are replaced, and the writer, whose result columns change, is dropped
and made again: SECURITY DEFINER, a fixed search_path and its grant said again). The two parts whose
arguments change are dropped and made again too (not executable by PUBLIC, said again).
ledger_append (0007) reads the writer's rows by name and answers as before, without the hash.

Measured with `python -m bench.append_cost` (a private Postgres 15, one session calling the
function back to back, synchronous_commit off, the bench's mix; 0014 and this revision in two
databases, alternated): see the figures in bench/README.md.

Rewriting every event once re-checks its constraints: events_position_floor (0007), NOT VALID
since older positions lie below it, is dropped for the pass and added again, unchanged. The pass
holds the table's lock: appends wait for it (`python -m bench.append_cost --backfill N` times it).

The chain's functions run as the owner only (0008: not executable by PUBLIC); `booking-ledger
audit` computes the same bytes in Python (core/chain.py) and never calls them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from alembic import op

from migrations import function_sql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

WRITER = "ledger_append_batch"
_WRITER_ARGUMENTS = ("text[], text[], boolean[], integer[], integer[], uuid[], text[], numeric[], text[], jsonb[], "
                     "timestamptz[], text[]")
CANONICAL_ARGUMENTS = ("bigint, uuid, text, integer, text, text, numeric, text, timestamptz, timestamptz, jsonb")
# New functions, with their argument types, in the order they are installed.
NEW = (
    ("ledger_microseconds", "timestamptz"),
    ("ledger_event_canonical", CANONICAL_ARGUMENTS),
)
# Replaced parts with the same arguments (one more answer column), with the revision each goes back to.
REPLACED = (
    ("ledger_refusal", "0013"),
    ("ledger_replay_or_conflict", "0013"),
)
_ADVANCE = "text, text, boolean, integer, numeric[], text[], integer, integer"
_WRITE_REST = ("integer, timestamptz, text[], text[], integer[], uuid[], text[], numeric[], text[], jsonb[], "
               "timestamptz[], text[]")
# Parts whose arguments change: (name, the revision before, its arguments, the arguments from now on).
CHANGED = (
    ("ledger_advance_booking", "0013", _ADVANCE,
     f"{_ADVANCE}, integer, timestamptz, uuid[], text[], jsonb[], timestamptz[]"),
    ("ledger_write_events", "0014", f"integer[], integer[], integer[], {_WRITE_REST}",
     f"integer[], integer[], integer[], bytea[], {_WRITE_REST}"),
)

# The chain step as an aggregate: run as a window over a booking's events in version order, its
# value at each event is that event's hash. Made for the pass and dropped after it.
CHAIN_STEP = """
CREATE FUNCTION ledger_chain_step(p_previous bytea, p_canonical bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $fn$ SELECT sha256(p_previous || p_canonical) $fn$
"""
CHAIN_AGGREGATE = """
CREATE AGGREGATE ledger_chain(bytea) (
    SFUNC = ledger_chain_step, STYPE = bytea,
    INITCOND = '\\x0000000000000000000000000000000000000000000000000000000000000000'
)
"""
BACKFILL = """
DO $$
DECLARE
    v_floor text;
BEGIN
    SELECT replace(pg_get_constraintdef(c.oid), ' NOT VALID', '') INTO v_floor
      FROM pg_constraint c
     WHERE c.conrelid = 'events'::regclass AND c.conname = 'events_position_floor';
    IF v_floor IS NOT NULL THEN
        ALTER TABLE events DROP CONSTRAINT events_position_floor;
    END IF;
    UPDATE events e SET hash = c.hash
      FROM (SELECT position,
                   ledger_chain(ledger_event_canonical(position, event_id, booking_code, version, type, department,
                                                       price_amount, price_currency, occurred_at, recorded_at, data))
                       OVER (PARTITION BY booking_code ORDER BY version) AS hash
              FROM events) c
     WHERE e.position = c.position;
    IF v_floor IS NOT NULL THEN
        EXECUTE format('ALTER TABLE events ADD CONSTRAINT events_position_floor %s NOT VALID', v_floor);
    END IF;
END
$$
"""
HEADS = """
UPDATE bookings b SET head = e.hash
  FROM events e
 WHERE e.booking_code = b.code AND e.version = b.version
"""


def _install_writer(version: str) -> None:
    op.execute(function_sql(WRITER, version))
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")
    op.execute(f"REVOKE EXECUTE ON FUNCTION {WRITER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {WRITER} TO ledger_api")


def upgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN hash bytea")
    op.execute("ALTER TABLE bookings ADD COLUMN head bytea")
    for name, arguments in NEW:
        op.execute(function_sql(name, "0016"))
        op.execute(f"REVOKE EXECUTE ON FUNCTION {name}({arguments}) FROM PUBLIC")
    op.execute(CHAIN_STEP)
    op.execute(CHAIN_AGGREGATE)
    op.execute(BACKFILL)
    op.execute("DROP AGGREGATE ledger_chain(bytea)")
    op.execute("DROP FUNCTION ledger_chain_step(bytea, bytea)")
    op.execute(HEADS)
    op.execute("ALTER TABLE events ALTER COLUMN hash SET NOT NULL")
    op.execute(f"DROP FUNCTION {WRITER}({_WRITER_ARGUMENTS})")
    for name, _, before, _ in CHANGED:
        op.execute(f"DROP FUNCTION {name}({before})")
    op.execute("ALTER TYPE ledger_answer ADD ATTRIBUTE hash bytea")
    for name, _ in REPLACED:
        op.execute(function_sql(name, "0016"))
    for name, _, _, after in CHANGED:
        op.execute(function_sql(name, "0016"))
        op.execute(f"REVOKE EXECUTE ON FUNCTION {name}({after}) FROM PUBLIC")
    _install_writer("0016")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {WRITER}({_WRITER_ARGUMENTS})")
    for name, _, _, after in CHANGED:
        op.execute(f"DROP FUNCTION {name}({after})")
    op.execute("ALTER TYPE ledger_answer DROP ATTRIBUTE hash")
    for name, previous in REPLACED:
        op.execute(function_sql(name, previous))
    for name, previous, before, _ in CHANGED:
        op.execute(function_sql(name, previous))
        op.execute(f"REVOKE EXECUTE ON FUNCTION {name}({before}) FROM PUBLIC")
    _install_writer("0014")
    for name, arguments in reversed(NEW):
        op.execute(f"DROP FUNCTION {name}({arguments})")
    op.execute("ALTER TABLE bookings DROP COLUMN head")
    op.execute("ALTER TABLE events DROP COLUMN hash")
