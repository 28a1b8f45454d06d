-- ledger_append_batch: many appends, each checked and applied on its own, in one transaction (group
-- commit; one append is a batch of one). Applied by the migration named in the file name; the
-- parts it calls are in the files of that revision or an earlier one, one function each.
--
-- The appends are given as per-append arrays (p_codes .. p_counts: append i carries the next
-- p_counts[i] entries of the per-event arrays; p_traceparents, last, is per append too). Each
-- append is answered by its own rows (ledger_answer): one per event stored (created / appended /
-- replayed), or one refusal (booking_code_taken, version_conflict, not_owner, booking_not_found,
-- event_id_conflict, invalid) with `detail` the answer's context. A stored event's row carries its chain
-- hash (0016: ledger_advance_booking computes it, ledger_write_events stores it). The rows come grouped by append, the groups not in
-- append order. A refused append writes nothing and does not affect its neighbours: every check
-- runs before the append's first write, so no subtransaction (EXCEPTION block) is needed. An error
-- raised by Postgres itself (a CHECK, bad data) still aborts the whole call: the caller then
-- redoes the batch append by append.
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
    p_occurred_at       timestamptz[],
    p_traceparents      text[] DEFAULT NULL  -- each append's W3C traceparent for its outbox rows;
                                             -- NULL (ledger_append's call): none
) RETURNS TABLE (  -- the columns of ledger_answer
    append_no integer, outcome text, detail jsonb, "position" bigint, event_id uuid, booking_code text,
    version integer, type text, price_amount numeric, price_currency text, data jsonb, department text,
    occurred_at timestamptz, recorded_at timestamptz, hash bytea
)
LANGUAGE plpgsql AS $fn$
DECLARE
    first       integer := 1;   -- the append's first event in the per-event arrays
    n           integer;        -- and its number of events
    v_last      integer;        -- its booking's version once it is written
    v_advanced  record;         -- ledger_advance_booking's answer: that version and the events' hashes
    v_recorded  timestamptz;    -- the events' recorded_at: the clock once the call's locks are held
    v_suspects  uuid[];         -- event ids that may make an append a retry or a conflict
    v_all_suspect boolean := array_position(p_event_ids, NULL) IS NOT NULL;  -- then every append is
    v_written   integer := 0;   -- events written so far (their index in the transaction's positions)
    v_src       integer[] := '{}';  -- the events waiting to be written: entry in the per-event arrays,
    v_app       integer[] := '{}';  -- append
    v_ver       integer[] := '{}';  -- version
    v_hash      bytea[] := '{}';    -- and chain hash
BEGIN
    -- The ordering argument (ledger_acquire_locks) needs this call to be the first write of its
    -- transaction.
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'ledger_append_batch must be the first write of its transaction'
            USING ERRCODE = '55000';
    END IF;
    PERFORM ledger_check_batch_arguments(p_codes, p_departments, p_may_write_any, p_expected_versions,
                                         p_counts, p_event_ids, p_types, p_amounts, p_currencies, p_data,
                                         p_occurred_at, p_traceparents);
    v_recorded := ledger_acquire_locks(p_codes, p_event_ids);
    v_suspects := ledger_suspect_event_ids(p_event_ids);

    -- Appends apply in arrival order: several appends to one booking see each other's writes, with
    -- versions to match, and a retry of an append earlier in the batch is a replay. Booking rows
    -- are written append by append (versions and owners build on them); events wait, to be written
    -- together at the end, or before the checks of a suspect append, which must see them.
    FOR i IN 1 .. cardinality(p_codes) LOOP
        n := p_counts[i];
        IF n < 1 OR n > 1000 THEN
            RETURN QUERY SELECT * FROM ledger_refusal(i, 'invalid', jsonb_build_object('message',
                format('an append carries 1 to 1000 events, got %s', n)));
            first := first + n;
            CONTINUE;
        END IF;
        IF v_all_suspect OR (v_suspects IS NOT NULL AND p_event_ids[first:first + n - 1] && v_suspects) THEN
            IF cardinality(v_src) > 0 THEN
                RETURN QUERY SELECT * FROM ledger_write_events(v_src, v_app, v_ver, v_hash, v_written, v_recorded,
                    p_codes, p_departments, p_expected_versions, p_event_ids, p_types, p_amounts, p_currencies,
                    p_data, p_occurred_at, p_traceparents);
                v_written := v_written + cardinality(v_src);
                v_src := '{}';
                v_app := '{}';
                v_ver := '{}';
                v_hash := '{}';
            END IF;
            RETURN QUERY SELECT * FROM ledger_replay_or_conflict(i, p_codes[i], p_departments[i], p_event_ids,
                p_types, p_amounts, p_currencies, p_data, p_occurred_at, first, n);
            IF FOUND THEN
                first := first + n;
                CONTINUE;
            END IF;
        END IF;

        v_advanced := ledger_advance_booking(p_codes[i], p_departments[i], p_may_write_any[i], p_expected_versions[i],
                                             p_amounts, p_currencies, first, n, v_written + cardinality(v_src),
                                             v_recorded, p_event_ids, p_types, p_data, p_occurred_at);
        v_last := v_advanced.o_version;
        IF v_last IS NULL THEN
            RETURN QUERY SELECT * FROM ledger_booking_refusal(i, p_codes[i], p_departments[i], p_may_write_any[i],
                                                              p_expected_versions[i]);
        ELSE
            FOR j IN 1 .. n LOOP
                v_src := array_append(v_src, first + j - 1);
                v_app := array_append(v_app, i);
                v_ver := array_append(v_ver, v_last - n + j);
                v_hash := array_append(v_hash, v_advanced.o_hashes[j]);
            END LOOP;
        END IF;
        first := first + n;
    END LOOP;
    IF cardinality(v_src) > 0 THEN
        RETURN QUERY SELECT * FROM ledger_write_events(v_src, v_app, v_ver, v_hash, v_written, v_recorded,
            p_codes, p_departments, p_expected_versions, p_event_ids, p_types, p_amounts, p_currencies,
            p_data, p_occurred_at, p_traceparents);
    END IF;
END
$fn$;
