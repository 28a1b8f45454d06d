-- ledger_append: one append, through ledger_append_batch (the one implementation of the checks),
-- with the contract's refusals raised as before: SQLSTATEs of class BL, which
-- service/ledger/db.py turns into the contract's error codes; DETAIL carries their context as
-- JSON. Applied by the migration named in the file name.
-- 0007: positions are xid * 65536 + index (ledger_append_batch); event ids are locked too.
CREATE OR REPLACE FUNCTION ledger_append(
    p_code              text,
    p_department        text,
    p_may_write_any     boolean,
    p_expected_version  integer,   -- 0: create; n: append at version n; NULL: append at any version
    p_event_ids         uuid[],
    p_types             text[],
    p_amounts           numeric[],
    p_currencies        text[],
    p_data              jsonb[],
    p_occurred_at       timestamptz[]
) RETURNS TABLE (
    replayed        boolean,
    "position"      bigint,
    event_id        uuid,
    booking_code    text,
    version         integer,
    type            text,
    price_amount    numeric,
    price_currency  text,
    data            jsonb,
    department      text,
    occurred_at     timestamptz,
    recorded_at     timestamptz
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r   record;
    n   integer := coalesce(cardinality(p_event_ids), 0);
BEGIN
    IF n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'an append carries 1 to 1000 events, got %', n USING ERRCODE = '22023';
    END IF;
    FOR r IN
        SELECT * FROM ledger_append_batch(ARRAY[p_code], ARRAY[p_department], ARRAY[p_may_write_any],
                                          ARRAY[p_expected_version], ARRAY[n], p_event_ids, p_types,
                                          p_amounts, p_currencies, p_data, p_occurred_at)
    LOOP
        CASE r.outcome
        WHEN 'created', 'appended', 'replayed' THEN
            replayed := r.outcome = 'replayed';
            "position" := r.position;
            event_id := r.event_id;
            booking_code := r.booking_code;
            version := r.version;
            type := r.type;
            price_amount := r.price_amount;
            price_currency := r.price_currency;
            data := r.data;
            department := r.department;
            occurred_at := r.occurred_at;
            recorded_at := r.recorded_at;
            RETURN NEXT;
        WHEN 'booking_code_taken' THEN
            RAISE EXCEPTION USING ERRCODE = 'BL001', MESSAGE = r.outcome, DETAIL = r.detail::text;
        WHEN 'version_conflict' THEN
            RAISE EXCEPTION USING ERRCODE = 'BL002', MESSAGE = r.outcome, DETAIL = r.detail::text;
        WHEN 'booking_not_found' THEN
            RAISE EXCEPTION USING ERRCODE = 'BL003', MESSAGE = r.outcome;
        WHEN 'not_owner' THEN
            RAISE EXCEPTION USING ERRCODE = 'BL004', MESSAGE = r.outcome, DETAIL = r.detail::text;
        WHEN 'event_id_conflict' THEN
            RAISE EXCEPTION USING ERRCODE = 'BL005', MESSAGE = r.outcome, DETAIL = coalesce(r.detail::text, '');
        ELSE
            RAISE EXCEPTION '%', r.detail->>'message' USING ERRCODE = '22023';
        END CASE;
    END LOOP;
END
$fn$;
