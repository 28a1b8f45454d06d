-- ledger_write_events: the events of the appends that passed their checks, written by one INSERT
-- (and their outbox rows, with their append's trace context, by one more), answered as created /
-- appended rows, grouped by append.
-- Event k of the list (p_src: its entry in ledger_append_batch's per-event arrays; p_app: its
-- append; p_ver: its version) gets index p_index + k - 1 in this transaction's positions.
-- Each event gets its chain hash, SHA-256 over the hash of the event before it in its booking (32
-- zero bytes for version 1) and its canonical form (ledger_event_canonical); the booking's head
-- becomes the hash of its last event, in the same statement as the INSERT. The list holds a
-- booking's events in version order (appends apply in arrival order), so one pass chains them: each
-- event follows its predecessor in the list, found by one query for the whole list beforehand (no
-- lookup per event), or, first of its booking there, the booking's head.
-- Applied by the migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_write_events(
    p_src integer[], p_app integer[], p_ver integer[], p_index integer, p_recorded timestamptz,
    p_codes text[], p_departments text[], p_expected_versions integer[],
    p_event_ids uuid[], p_types text[], p_amounts numeric[], p_currencies text[], p_data jsonb[],
    p_occurred_at timestamptz[], p_traceparents text[]
) RETURNS SETOF ledger_answer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_base      bigint;
    v_prev      integer[];        -- event k's predecessor in the list (the same booking), or NULL,
    v_start     bytea[];          -- and, for a booking's first event in the list, the hash it follows
    v_hashes    bytea[] := '{}';  -- event k's hash
BEGIN
    -- Read only now, once the booking rows are written: every lock was taken before the
    -- transaction got its id (ledger_acquire_locks). (xid + offset) * 65536: the offset (0010)
    -- lifts positions past those of a restored dump, whose cluster had counted further
    -- (booking-ledger migrate --advance-positions).
    v_base := (pg_current_xact_id()::text::bigint + (SELECT xid_offset FROM ledger_position_offset)) * 65536;
    -- A booking's first event in the list follows 32 zero bytes (version 1) or the booking's head.
    SELECT array_agg(q.prev ORDER BY q.k),
           array_agg(CASE WHEN q.prev IS NOT NULL THEN NULL
                          WHEN q.ver = 1 THEN '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
                          ELSE (SELECT b.head FROM bookings b WHERE b.code = q.code) END ORDER BY q.k)
      INTO v_prev, v_start
      FROM (SELECT u.k, u.ver, p_codes[u.app] AS code, lag(u.k) OVER (PARTITION BY p_codes[u.app] ORDER BY u.k) AS prev
              FROM unnest(p_app, p_ver) WITH ORDINALITY AS u(app, ver, k)) q;
    FOR k IN 1 .. cardinality(p_src) LOOP
        v_hashes := array_append(v_hashes, sha256(coalesce(v_hashes[v_prev[k]], v_start[k]) || ledger_event_canonical(
            v_base + p_index + k - 1, p_event_ids[p_src[k]], p_codes[p_app[k]], p_ver[k], p_types[p_src[k]],
            p_departments[p_app[k]], p_amounts[p_src[k]], p_currencies[p_src[k]], p_occurred_at[p_src[k]],
            p_recorded, p_data[p_src[k]])));
    END LOOP;
    RETURN QUERY
        WITH pending AS (
            SELECT v_base + p_index + q.k - 1 AS pos, q.src, q.app, q.ver, q.k
              FROM unnest(p_src, p_app, p_ver) WITH ORDINALITY AS q(src, app, ver, k)
        ), written AS (
            INSERT INTO events AS e (position, event_id, booking_code, version, type, price_amount,
                                     price_currency, data, department, occurred_at, recorded_at, hash)
            SELECT p.pos, p_event_ids[p.src], p_codes[p.app], p.ver, p_types[p.src], p_amounts[p.src],
                   p_currencies[p.src], p_data[p.src], p_departments[p.app], p_occurred_at[p.src], p_recorded,
                   v_hashes[p.k]
              FROM pending p
            RETURNING e.position, e.event_id, e.booking_code, e.version, e.type, e.price_amount,
                      e.price_currency, e.data, e.department, e.occurred_at, e.recorded_at, e.hash
        ), queued AS (
            -- From the list, as the events are: the same rows, and each append's trace context.
            INSERT INTO outbox (position, booking_code, version, traceparent)
            SELECT p.pos, p_codes[p.app], p.ver, p_traceparents[p.app] FROM pending p
        ), headed AS (
            -- Each booking's head: the hash of its last event in the list.
            UPDATE bookings b SET head = h.hash
              FROM (SELECT DISTINCT ON (p_codes[p.app]) p_codes[p.app] AS code, v_hashes[p.k] AS hash
                      FROM pending p
                     ORDER BY p_codes[p.app], p.k DESC) h
             WHERE b.code = h.code
        )
        SELECT p.app, CASE WHEN p_expected_versions[p.app] = 0 THEN 'created' ELSE 'appended' END,
               NULL::jsonb, w.position, w.event_id, w.booking_code, w.version, w.type, w.price_amount,
               w.price_currency, w.data, w.department, w.occurred_at, w.recorded_at, w.hash
          FROM written w
          JOIN pending p ON p.pos = w.position
         ORDER BY p.app, w.version;
END
$fn$
