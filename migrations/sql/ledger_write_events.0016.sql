-- ledger_write_events: the events of the appends that passed their checks, written by one INSERT
-- (and their outbox rows, with their append's trace context, by one more), answered as created /
-- appended rows, grouped by append.
-- Event k of the list (p_src: its entry in ledger_append_batch's per-event arrays; p_app: its
-- append; p_ver: its version; p_hashes: its chain hash, which ledger_advance_booking computed) gets
-- index p_index + k - 1 in this transaction's positions.
-- Applied by the migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_write_events(
    p_src integer[], p_app integer[], p_ver integer[], p_hashes bytea[], p_index integer, p_recorded timestamptz,
    p_codes text[], p_departments text[], p_expected_versions integer[],
    p_event_ids uuid[], p_types text[], p_amounts numeric[], p_currencies text[], p_data jsonb[],
    p_occurred_at timestamptz[], p_traceparents text[]
) RETURNS SETOF ledger_answer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_base      bigint;
BEGIN
    -- Read only now, once the booking rows are written: every lock was taken before the
    -- transaction got its id (ledger_acquire_locks). (xid + offset) * 65536: the offset (0010)
    -- lifts positions past those of a restored dump, whose cluster had counted further
    -- (booking-ledger migrate --advance-positions). ledger_advance_booking hashed the same positions.
    v_base := (pg_current_xact_id()::text::bigint + (SELECT xid_offset FROM ledger_position_offset)) * 65536;
    RETURN QUERY
        WITH pending AS (
            SELECT v_base + p_index + q.k - 1 AS pos, q.src, q.app, q.ver, q.hash
              FROM unnest(p_src, p_app, p_ver, p_hashes) WITH ORDINALITY AS q(src, app, ver, hash, k)
        ), written AS (
            INSERT INTO events AS e (position, event_id, booking_code, version, type, price_amount,
                                     price_currency, data, department, occurred_at, recorded_at, hash)
            SELECT p.pos, p_event_ids[p.src], p_codes[p.app], p.ver, p_types[p.src], p_amounts[p.src],
                   p_currencies[p.src], p_data[p.src], p_departments[p.app], p_occurred_at[p.src], p_recorded,
                   p.hash
              FROM pending p
            RETURNING e.position, e.event_id, e.booking_code, e.version, e.type, e.price_amount,
                      e.price_currency, e.data, e.department, e.occurred_at, e.recorded_at, e.hash
        ), queued AS (
            -- From the list, as the events are: the same rows, and each append's trace context.
            INSERT INTO outbox (position, booking_code, version, traceparent)
            SELECT p.pos, p_codes[p.app], p.ver, p_traceparents[p.app] FROM pending p
        )
        SELECT p.app, CASE WHEN p_expected_versions[p.app] = 0 THEN 'created' ELSE 'appended' END,
               NULL::jsonb, w.position, w.event_id, w.booking_code, w.version, w.type, w.price_amount,
               w.price_currency, w.data, w.department, w.occurred_at, w.recorded_at, w.hash
          FROM written w
          JOIN pending p ON p.pos = w.position
         ORDER BY p.app, w.version;
END
$fn$
