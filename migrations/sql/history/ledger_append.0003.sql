-- ledger_append: the whole append transaction in one round trip (booking row, events, outbox).
-- Errors are raised with SQLSTATEs of class BL, which service/ledger/db.py turns into the
-- contract's error codes; DETAIL carries their context as JSON. A raise rolls the call back:
-- nothing is written unless every check passed. Applied by the migration named in the file name.
-- 0003: refuses to run after other writes of its transaction (see the first check), and
-- measures the data limit on the stored text.
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
    n           integer := cardinality(p_event_ids);
    v_known     integer;
    v_same      integer;
    v_offsets   integer;
    v_known_ids uuid[];
    v_owner     text;
    v_current   integer;
    v_last      integer;
    v_amount    numeric;
    v_currency  text;
    v_base      bigint;
BEGIN
    -- The ordering argument below needs this call to be the first write of its transaction.
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'ledger_append must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    IF n IS NULL OR n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'an append carries 1 to 1000 events, got %', coalesce(n, 0)
            USING ERRCODE = '22023';
    END IF;

    -- Appends to one booking queue here, before this transaction writes anything and so
    -- before it is given a transaction id. Hence for one booking, a later version always
    -- belongs to a later (larger) transaction id, and its position (derived from that id,
    -- below) is larger too: per booking, position order is version order. A row lock on
    -- bookings could not give this, because locking a row first assigns the transaction id
    -- and only then waits. Advisory locks live on the virtual transaction id.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_code, 0));

    -- A request whose event_ids are all recorded, for this booking, with the same content and
    -- in the same relative order, is a retry: answer it with the recorded events.
    -- "Same content" is type, price, data, occurred_at and the writing department.
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
      FROM unnest(p_event_ids, p_types, p_amounts, p_currencies, p_data, p_occurred_at)
           WITH ORDINALITY AS r(event_id, type, amount, currency, data, occurred_at, ord)
      JOIN events e ON e.event_id = r.event_id;

    IF v_known > 0 THEN
        IF v_known = n AND v_same = n AND v_offsets = 1 THEN
            RETURN QUERY
                SELECT true, e.position, e.event_id, e.booking_code, e.version, e.type,
                       e.price_amount, e.price_currency, e.data, e.department,
                       e.occurred_at, e.recorded_at
                  FROM events e
                 WHERE e.event_id = ANY (p_event_ids)
                 ORDER BY e.version;
            RETURN;
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = 'BL005',
            MESSAGE = 'event_id_conflict',
            DETAIL = json_build_object('event_ids', v_known_ids)::text;
    END IF;

    -- The data limit holds for what is stored: jsonb writes numbers out in full (1e308 is 309
    -- digits), so the size the client sent is not the size the ledger and the streams carry.
    IF (SELECT coalesce(sum(octet_length(d::text)), 0) FROM unnest(p_data) AS d) > 262144 THEN
        RAISE EXCEPTION 'data of all events together is over 262144 bytes as stored'
            USING ERRCODE = '22023';
    END IF;

    -- The booking's price becomes the last price set in this batch, if any.
    SELECT r.amount, r.currency INTO v_amount, v_currency
      FROM unnest(p_amounts, p_currencies) WITH ORDINALITY AS r(amount, currency, ord)
     WHERE r.amount IS NOT NULL
     ORDER BY r.ord DESC
     LIMIT 1;

    IF p_expected_version = 0 THEN
        -- The primary key is the collision check: of any number of concurrent creators of
        -- one code, in any process, exactly one inserts this row.
        INSERT INTO bookings (code, department, version, price_amount, price_currency)
        VALUES (p_code, p_department, n, v_amount, v_currency)
        ON CONFLICT (code) DO NOTHING;
        IF NOT FOUND THEN
            SELECT b.department INTO v_owner FROM bookings b WHERE b.code = p_code;
            RAISE EXCEPTION USING
                ERRCODE = 'BL001',
                MESSAGE = 'booking_code_taken',
                DETAIL = json_build_object('department', v_owner)::text;
        END IF;
        v_last := n;
    ELSE
        UPDATE bookings b
           SET version = b.version + n,
               price_amount = coalesce(v_amount, b.price_amount),
               price_currency = CASE WHEN v_amount IS NULL THEN b.price_currency ELSE v_currency END,
               updated_at = now()
         WHERE b.code = p_code
           AND (p_expected_version IS NULL OR b.version = p_expected_version)
           AND (p_may_write_any OR b.department = p_department)
        RETURNING b.version INTO v_last;
        IF NOT FOUND THEN
            SELECT b.department, b.version INTO v_owner, v_current FROM bookings b WHERE b.code = p_code;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'BL003', MESSAGE = 'booking_not_found';
            ELSIF NOT p_may_write_any AND v_owner <> p_department THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'BL004',
                    MESSAGE = 'not_owner',
                    DETAIL = json_build_object('department', v_owner)::text;
            ELSE
                RAISE EXCEPTION USING
                    ERRCODE = 'BL002',
                    MESSAGE = 'version_conflict',
                    DETAIL = json_build_object('current_version', v_current)::text;
            END IF;
        END IF;
    END IF;

    v_base := pg_current_xact_id()::text::bigint * 1000;
    RETURN QUERY
        WITH written AS (
            INSERT INTO events AS e (position, event_id, booking_code, version, type, price_amount,
                                     price_currency, data, department, occurred_at, recorded_at)
            SELECT v_base + r.ord - 1, r.event_id, p_code, v_last - n + r.ord::integer, r.type,
                   r.amount, r.currency, r.data, p_department, r.occurred_at, now()
              FROM unnest(p_event_ids, p_types, p_amounts, p_currencies, p_data, p_occurred_at)
                   WITH ORDINALITY AS r(event_id, type, amount, currency, data, occurred_at, ord)
            RETURNING e.position, e.event_id, e.booking_code, e.version, e.type, e.price_amount,
                      e.price_currency, e.data, e.department, e.occurred_at, e.recorded_at
        ), queued AS (
            INSERT INTO outbox (position, booking_code, version)
            SELECT w.position, w.booking_code, w.version FROM written w
        )
        SELECT false, w.position, w.event_id, w.booking_code, w.version, w.type, w.price_amount,
               w.price_currency, w.data, w.department, w.occurred_at, w.recorded_at
          FROM written w
         ORDER BY w.version;
END
$fn$;
