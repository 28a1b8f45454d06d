-- ledger_append_batch: many appends, each checked and applied on its own, in one transaction (group
-- commit). Applied by the migration named in the file name; ledger_append (one append) calls it.
--
-- The appends are given as per-append arrays (p_codes .. p_counts: append i carries the next
-- p_counts[i] entries of the per-event arrays). Each append is answered by its own rows:
--   created / appended / replayed   one row per event of the append (the stored event);
--   booking_code_taken, version_conflict, not_owner, booking_not_found, event_id_conflict,
--   invalid                         one row, event columns NULL, `detail` the answer's context.
-- A refused append writes nothing and does not affect its neighbours: every check runs before the
-- append's first write, so no subtransaction (EXCEPTION block) is needed. An error raised by
-- Postgres itself (a CHECK, bad data) still aborts the whole call: the caller then redoes the
-- batch append by append.
--
-- Cost (0012): per append, the common path runs no statement that Postgres plans again on each
-- call. The retry and duplicate-id checks run only for an append carrying an event id that one
-- lookup per batch found recorded or repeated, and the events of all the appends are written by
-- one INSERT (with their outbox rows) instead of one per append.
CREATE OR REPLACE FUNCTION ledger_append_batch(
    p_codes             text[],
    p_departments       text[],
    p_may_write_any     boolean[],
    p_expected_versions integer[],  -- 0: create; n: append at version n; NULL: append at any version
    p_counts            integer[],  -- events per append, in order
    p_event_ids         uuid[],
    p_types             text[],
    p_amounts           numeric[],
    p_currencies        text[],
    p_data              jsonb[],
    p_occurred_at       timestamptz[]
) RETURNS TABLE (
    append_no       integer,
    outcome         text,
    detail          jsonb,
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
    m           integer := coalesce(cardinality(p_codes), 0);
    total       integer := coalesce(cardinality(p_event_ids), 0);
    i           integer;
    n           integer;
    first       integer := 1;   -- index of the append's first event in the per-event arrays
    next_index  integer := 0;   -- index of the next event in this transaction's positions
    k           bigint;
    v_code      text;
    v_dept      text;
    v_any       boolean;
    v_expected  integer;
    v_known     integer;
    v_same      integer;
    v_offsets   integer;
    v_distinct  integer;
    v_known_ids uuid[];
    v_owner     text;
    v_current   integer;
    v_last      integer;
    v_amount    numeric;
    v_currency  text;
    v_base      bigint;
    v_recorded  timestamptz;    -- the events' recorded_at (0011): read once every lock is held
    j           integer;
    v_suspects  uuid[];             -- event ids already recorded, or carried twice by this batch
    v_all_suspect boolean;          -- a NULL event id: let every append take the full checks
    v_suspect   boolean := false;
    v_src       integer[] := '{}';  -- the events waiting to be written: index in the per-event arrays,
    v_app       integer[] := '{}';  -- their append,
    v_ver       integer[] := '{}';  -- version
    v_pos       bigint[] := '{}';   -- and position
BEGIN
    -- The ordering argument below needs this call to be the first write of its transaction.
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'ledger_append_batch must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    IF m < 1 OR cardinality(p_departments) <> m OR cardinality(p_may_write_any) <> m
       OR cardinality(p_expected_versions) <> m OR cardinality(p_counts) <> m
       OR (SELECT sum(c) FROM unnest(p_counts) c) IS DISTINCT FROM total
       OR EXISTS (SELECT FROM unnest(p_counts) c WHERE c IS NULL OR c < 0)
       OR cardinality(p_types) <> total OR cardinality(p_amounts) <> total
       OR cardinality(p_currencies) <> total OR cardinality(p_data) <> total
       OR cardinality(p_occurred_at) <> total THEN
        RAISE EXCEPTION 'ledger_append_batch: the argument arrays do not match' USING ERRCODE = '22023';
    END IF;
    -- Positions are xid * 65536 + index: one transaction holds at most 65536 events.
    IF total > 65536 THEN
        RAISE EXCEPTION 'a batch carries at most 65536 events, got %', total USING ERRCODE = '22023';
    END IF;

    -- Every lock this call needs, taken in one pass, in one global order (ascending key), before
    -- its first write and so before the transaction is given an id:
    --  * one per booking: appends to one booking queue here, so for one booking a later
    --    transaction always gets a larger transaction id, and its positions (derived from the
    --    id, below) are larger too: per booking, position order is version order. A row lock on
    --    bookings could not give this: locking a row first assigns the transaction id, then waits.
    --  * one per event id: two batches carrying one event id for different bookings would
    --    otherwise both write and then wait for each other on the unique index (a deadlock).
    -- Taking them all in one sorted pass means no two callers can each hold a lock the other
    -- waits for. Advisory locks live on the virtual transaction id until then.
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

    -- recorded_at is the clock read now, not now() (the transaction's start, 0010 and before): a
    -- caller that waited above for a booking's lock reads the clock after the previous holder
    -- committed, so per booking recorded_at follows version order (what the price as of a moment
    -- orders by). One value for the whole call: the events of one append share it.
    v_recorded := clock_timestamp();

    -- One lookup for the whole batch, with every lock held: the event ids already recorded, and
    -- those the batch carries more than once. Only an append carrying one of them can be a retry
    -- or an event_id conflict; every other append skips those checks (0012).
    -- Planned anew on every call (EXECUTE), with the ids at hand: a generic plan cached by a
    -- session that started while `events` was small is a sequential scan, which the session would
    -- keep for its life while the table grows (measured: 0.4 -> 1.4 ms per append within a minute).
    EXECUTE 'SELECT array_agg(s.id) FROM ('
            '    SELECT e.event_id AS id FROM events e WHERE e.event_id = ANY ($1)'
            '    UNION ALL'
            '    SELECT x FROM unnest($1) x GROUP BY x HAVING count(*) > 1'
            ') s'
       INTO v_suspects USING p_event_ids;
    v_all_suspect := array_position(p_event_ids, NULL) IS NOT NULL;

    -- Appends apply in arrival order: several appends to one booking see each other's writes,
    -- with versions to match, and a retry of an append earlier in the batch is a replay.
    -- The events of the appends that pass their checks are written together, by one INSERT, at
    -- the end (0012), or earlier, just before the checks of an append that must see them (a
    -- suspect, above): that is the one place where an append reads what an earlier one wrote.
    -- (The booking rows are written at once, append by append: versions and owners build on them.)
    FOR i IN 1 .. m + 1 LOOP
        IF i <= m THEN
            n := p_counts[i];
            v_suspect := n BETWEEN 1 AND 1000
                         AND (v_all_suspect OR p_event_ids[first:first + n - 1] && v_suspects);
        END IF;
        IF (i > m OR v_suspect) AND cardinality(v_src) > 0 THEN
            RETURN QUERY
                WITH written AS (
                    INSERT INTO events AS e (position, event_id, booking_code, version, type, price_amount,
                                             price_currency, data, department, occurred_at, recorded_at)
                    SELECT q.pos, p_event_ids[q.src], p_codes[q.app], q.ver, p_types[q.src], p_amounts[q.src],
                           p_currencies[q.src], p_data[q.src], p_departments[q.app], p_occurred_at[q.src], v_recorded
                      FROM unnest(v_pos, v_src, v_app, v_ver) AS q(pos, src, app, ver)
                    RETURNING e.position, e.event_id, e.booking_code, e.version, e.type, e.price_amount,
                              e.price_currency, e.data, e.department, e.occurred_at, e.recorded_at
                ), queued AS (
                    INSERT INTO outbox (position, booking_code, version)
                    SELECT w.position, w.booking_code, w.version FROM written w
                )
                SELECT q.app, CASE WHEN p_expected_versions[q.app] = 0 THEN 'created' ELSE 'appended' END,
                       NULL::jsonb, w.position, w.event_id, w.booking_code, w.version, w.type, w.price_amount,
                       w.price_currency, w.data, w.department, w.occurred_at, w.recorded_at
                  FROM written w
                  JOIN unnest(v_pos, v_app) AS q(pos, app) ON q.pos = w.position
                 ORDER BY q.app, w.version;
            v_src := '{}';
            v_app := '{}';
            v_ver := '{}';
            v_pos := '{}';
        END IF;
        EXIT WHEN i > m;
        v_code := p_codes[i];
        v_dept := p_departments[i];
        v_any := p_may_write_any[i];
        v_expected := p_expected_versions[i];
        IF n < 1 OR n > 1000 THEN
            RETURN QUERY SELECT i, 'invalid'::text,
                                jsonb_build_object('message', format('an append carries 1 to 1000 events, got %s', n)),
                                NULL::bigint, NULL::uuid, NULL::text, NULL::integer, NULL::text, NULL::numeric,
                                NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::timestamptz;
            first := first + n;
            CONTINUE;
        END IF;

        IF v_suspect THEN
            -- A request whose event_ids are all recorded, for this booking, with the same content and
            -- in the same relative order, is a retry: answer it with the recorded events.
            -- "Same content" is type, price, data, occurred_at and the writing department.
            SELECT count(*),
                   count(*) FILTER (WHERE e.booking_code = v_code
                                      AND e.type = r.type
                                      AND e.price_amount IS NOT DISTINCT FROM r.amount
                                      AND e.price_currency IS NOT DISTINCT FROM r.currency
                                      AND e.data IS NOT DISTINCT FROM r.data
                                      AND e.occurred_at IS NOT DISTINCT FROM r.occurred_at
                                      AND e.department = v_dept),
                   count(DISTINCT e.version - r.ord),
                   array_agg(e.event_id ORDER BY r.ord)
              INTO v_known, v_same, v_offsets, v_known_ids
              FROM unnest(p_event_ids[first:first + n - 1], p_types[first:first + n - 1],
                          p_amounts[first:first + n - 1], p_currencies[first:first + n - 1],
                          p_data[first:first + n - 1], p_occurred_at[first:first + n - 1])
                   WITH ORDINALITY AS r(event_id, type, amount, currency, data, occurred_at, ord)
              JOIN events e ON e.event_id = r.event_id;

            IF v_known > 0 THEN
                IF v_known = n AND v_same = n AND v_offsets = 1 THEN
                    -- A replay answers "stored", so its commit must wait for the synchronous standby as a
                    -- write's does. Postgres waits only for a transaction that has an id *and* wrote WAL:
                    -- a transactional logical message gives it both, touching no table. Without it, a
                    -- replay could vouch for an earlier try whose wait for the standby was cancelled (a
                    -- cancel there keeps the commit, on the primary's disk only). 0010.
                    PERFORM pg_logical_emit_message(true, 'booking-ledger', 'replay');
                    RETURN QUERY
                        SELECT i, 'replayed'::text, NULL::jsonb, e.position, e.event_id, e.booking_code, e.version,
                               e.type, e.price_amount, e.price_currency, e.data, e.department,
                               e.occurred_at, e.recorded_at
                          FROM events e
                         WHERE e.event_id = ANY (p_event_ids[first:first + n - 1])
                         ORDER BY e.version;
                ELSE
                    RETURN QUERY SELECT i, 'event_id_conflict'::text, jsonb_build_object('event_ids', v_known_ids),
                                        NULL::bigint, NULL::uuid, NULL::text, NULL::integer, NULL::text, NULL::numeric,
                                        NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::timestamptz;
                END IF;
                first := first + n;
                CONTINUE;
            END IF;

            -- One event_id twice in one append: the unique key would abort the whole batch.
            SELECT count(DISTINCT x) INTO v_distinct FROM unnest(p_event_ids[first:first + n - 1]) x;
            IF v_distinct < n THEN
                RETURN QUERY SELECT i, 'event_id_conflict'::text, NULL::jsonb,
                                    NULL::bigint, NULL::uuid, NULL::text, NULL::integer, NULL::text, NULL::numeric,
                                    NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::timestamptz;
                first := first + n;
                CONTINUE;
            END IF;
        END IF;

        -- The booking's price becomes the last price set in this append, if any.
        v_amount := NULL;
        v_currency := NULL;
        FOR j IN REVERSE first + n - 1 .. first LOOP
            IF p_amounts[j] IS NOT NULL THEN
                v_amount := p_amounts[j];
                v_currency := p_currencies[j];
                EXIT;
            END IF;
        END LOOP;

        IF v_expected = 0 THEN
            -- The primary key is the collision check: of any number of concurrent creators of
            -- one code, in any process or batch, exactly one inserts this row.
            INSERT INTO bookings (code, department, version, price_amount, price_currency)
            VALUES (v_code, v_dept, n, v_amount, v_currency)
            ON CONFLICT (code) DO NOTHING;
            IF NOT FOUND THEN
                SELECT b.department INTO v_owner FROM bookings b WHERE b.code = v_code;
                RETURN QUERY SELECT i, 'booking_code_taken'::text, jsonb_build_object('department', v_owner),
                                    NULL::bigint, NULL::uuid, NULL::text, NULL::integer, NULL::text, NULL::numeric,
                                    NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::timestamptz;
                first := first + n;
                CONTINUE;
            END IF;
            v_last := n;
        ELSE
            UPDATE bookings b
               SET version = b.version + n,
                   price_amount = coalesce(v_amount, b.price_amount),
                   price_currency = CASE WHEN v_amount IS NULL THEN b.price_currency ELSE v_currency END,
                   updated_at = now()
             WHERE b.code = v_code
               AND (v_expected IS NULL OR b.version = v_expected)
               AND (v_any OR b.department = v_dept)
            RETURNING b.version INTO v_last;
            IF NOT FOUND THEN
                SELECT b.department, b.version INTO v_owner, v_current FROM bookings b WHERE b.code = v_code;
                RETURN QUERY
                    SELECT i,
                           CASE WHEN v_owner IS NULL THEN 'booking_not_found'
                                WHEN NOT v_any AND v_owner <> v_dept THEN 'not_owner'
                                ELSE 'version_conflict' END,
                           CASE WHEN v_owner IS NULL THEN NULL
                                WHEN NOT v_any AND v_owner <> v_dept THEN jsonb_build_object('department', v_owner)
                                ELSE jsonb_build_object('current_version', v_current) END,
                           NULL::bigint, NULL::uuid, NULL::text, NULL::integer, NULL::text, NULL::numeric,
                           NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::timestamptz;
                first := first + n;
                CONTINUE;
            END IF;
        END IF;

        -- Read only now: every lock is held (above), so the id is assigned after all of them.
        IF v_base IS NULL THEN
            -- (xid + offset) * 65536: the offset (0010) lifts positions past those of a restored
            -- dump, whose cluster had counted further (booking-ledger migrate --advance-positions).
            v_base := (pg_current_xact_id()::text::bigint
                       + (SELECT xid_offset FROM ledger_position_offset)) * 65536;
        END IF;
        FOR j IN 1 .. n LOOP
            v_src := array_append(v_src, first + j - 1);
            v_app := array_append(v_app, i);
            v_ver := array_append(v_ver, v_last - n + j);
            v_pos := array_append(v_pos, v_base + next_index + j - 1);
        END LOOP;
        next_index := next_index + n;
        first := first + n;
    END LOOP;
END
$fn$;
