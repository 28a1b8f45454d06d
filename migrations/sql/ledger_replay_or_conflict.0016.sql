-- ledger_replay_or_conflict: the answer for an append that carries an event id already recorded,
-- or one id twice: its replay (the recorded events) or an event_id_conflict. No rows: the append
-- is new after all, and goes on to be written. Its events are entries p_first .. p_first + p_count - 1
-- of ledger_append_batch's per-event arrays. Applied by the migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_replay_or_conflict(
    p_append_no integer, p_code text, p_department text,
    p_event_ids uuid[], p_types text[], p_amounts numeric[], p_currencies text[], p_data jsonb[],
    p_occurred_at timestamptz[], p_first integer, p_count integer
) RETURNS SETOF ledger_answer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_last      integer := p_first + p_count - 1;
    v_known     integer;    -- of the append's ids, how many are recorded,
    v_same      integer;    -- how many of those with the same content, for this booking,
    v_offsets   integer;    -- in how many relative orders,
    v_known_ids uuid[];     -- and which
BEGIN
    -- A request whose event_ids are all recorded, for this booking, with the same content and in
    -- the same relative order, is a retry: answer it with the recorded events. "Same content" is
    -- type, price, data, occurred_at and the writing department.
    SELECT count(*),
           count(*) FILTER (WHERE e.booking_code = p_code
                              AND e.type = r.type
                              AND e.price_amount IS NOT DISTINCT FROM r.amount
                              AND e.price_currency IS NOT DISTINCT FROM r.currency
                              AND e.data IS NOT DISTINCT FROM r.data
                              AND e.occurred_at IS NOT DISTINCT FROM r.occurred_at
                              AND e.department = p_department),
           count(DISTINCT e.version - r.ord),
           array_agg(e.event_id ORDER BY r.ord)
      INTO v_known, v_same, v_offsets, v_known_ids
      FROM unnest(p_event_ids[p_first:v_last], p_types[p_first:v_last], p_amounts[p_first:v_last],
                  p_currencies[p_first:v_last], p_data[p_first:v_last], p_occurred_at[p_first:v_last])
           WITH ORDINALITY AS r(event_id, type, amount, currency, data, occurred_at, ord)
      JOIN events e ON e.event_id = r.event_id;

    IF v_known = p_count AND v_same = p_count AND v_offsets = 1 THEN
        -- A replay answers "stored", so its commit must wait for the synchronous standby as a
        -- write's does. Postgres waits only for a transaction that has an id *and* wrote WAL: a
        -- transactional logical message gives it both, touching no table. Without it, a replay
        -- could vouch for an earlier try whose wait for the standby was cancelled (a cancel there
        -- keeps the commit, on the primary's disk only). 0010.
        PERFORM pg_logical_emit_message(true, 'booking-ledger', 'replay');
        RETURN QUERY
            SELECT p_append_no, 'replayed'::text, NULL::jsonb, e.position, e.event_id, e.booking_code,
                   e.version, e.type, e.price_amount, e.price_currency, e.data, e.department,
                   e.occurred_at, e.recorded_at, e.hash
              FROM events e
             WHERE e.event_id = ANY (p_event_ids[p_first:v_last])
             ORDER BY e.version;
    ELSIF v_known > 0 THEN
        RETURN QUERY SELECT * FROM ledger_refusal(p_append_no, 'event_id_conflict',
                                                  jsonb_build_object('event_ids', v_known_ids));
    ELSIF (SELECT count(DISTINCT x) FROM unnest(p_event_ids[p_first:v_last]) x) < p_count THEN
        -- One event_id twice in one append: the unique key would abort the whole batch.
        RETURN QUERY SELECT * FROM ledger_refusal(p_append_no, 'event_id_conflict', NULL);
    END IF;
END
$fn$
