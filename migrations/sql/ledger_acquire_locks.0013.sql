-- ledger_acquire_locks: every lock a call of ledger_append_batch needs, taken in one pass, in one
-- global order (ascending key), before its first write and so before the transaction is given an
-- id. Applied by the migration named in the file name.
--  * one per booking: appends to one booking queue here, so for one booking a later transaction
--    always gets a larger transaction id, and its positions (derived from the id) are larger too:
--    per booking, position order is version order. A row lock on bookings could not give this:
--    locking a row first assigns the transaction id, then waits.
--  * one per event id: two batches carrying one event id for different bookings would otherwise
--    both write and then wait for each other on the unique index (a deadlock).
-- Taking them all in one sorted pass means no two callers can each hold a lock the other waits
-- for. Advisory locks live on the virtual transaction id until then.
--
-- Returns the clock read once every lock is held: the call's recorded_at. Not now() (the
-- transaction's start): a caller that waited for a booking's lock reads it after the previous
-- holder committed, so per booking recorded_at follows version order (what the price as of a
-- moment orders by; 0011).
CREATE OR REPLACE FUNCTION ledger_acquire_locks(p_codes text[], p_event_ids uuid[]) RETURNS timestamptz
LANGUAGE plpgsql AS $fn$
DECLARE
    k   bigint;
BEGIN
    FOR k IN
        SELECT DISTINCT key FROM (
            SELECT hashtextextended(c, 0) AS key FROM unnest(p_codes) c
            UNION ALL
            SELECT hashtextextended(e::text, 1) FROM unnest(p_event_ids) e
        ) keys
        ORDER BY key
    LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
    RETURN clock_timestamp();
END
$fn$
