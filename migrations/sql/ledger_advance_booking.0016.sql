-- ledger_advance_booking: the booking row of one append, written: created (p_expected 0) or moved
-- on by p_count versions, its price the last one the append sets (entries p_first .. p_first +
-- p_count - 1 of the per-event arrays), if any, and its head the chain hash of the append's last
-- event. Returns the booking's new version and the hash of each of the append's events, or NULLs
-- when the append is refused (ledger_booking_refusal says why); then nothing was written. Applied by
-- the migration named in the file name.
--
-- The chain (0016): an event's hash is SHA-256 over the hash of the event before it in its booking
-- (the booking's head; 32 zero bytes before version 1) and its canonical form
-- (ledger_event_canonical), which covers its position: the append's events get positions from
-- index p_index of the transaction's (as ledger_write_events writes them). Computing them here, from
-- the head read under the booking's lock, lets one write of the booking row carry the head too.
-- Asking for the transaction id here assigns it: every lock of the call is held already
-- (ledger_acquire_locks), which is all the position order needs.
CREATE OR REPLACE FUNCTION ledger_advance_booking(
    p_code text, p_department text, p_may_write_any boolean, p_expected integer,
    p_amounts numeric[], p_currencies text[], p_first integer, p_count integer,
    p_index integer, p_recorded timestamptz, p_event_ids uuid[], p_types text[], p_data jsonb[],
    p_occurred_at timestamptz[],
    OUT o_version integer, OUT o_hashes bytea[]
)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_amount    numeric;
    v_currency  text;
    v_old       integer := 0;
    v_head      bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    v_base      bigint;
    e           integer;
BEGIN
    FOR j IN REVERSE p_first + p_count - 1 .. p_first LOOP
        IF p_amounts[j] IS NOT NULL THEN
            v_amount := p_amounts[j];
            v_currency := p_currencies[j];
            EXIT;
        END IF;
    END LOOP;

    IF p_expected IS DISTINCT FROM 0 THEN
        -- NULL expected: at whatever version the booking is. No other call writes this row now
        -- (the booking's lock), so what is read here is what the UPDATE below moves on.
        SELECT b.version, b.head INTO v_old, v_head
          FROM bookings b
         WHERE b.code = p_code
           AND (p_expected IS NULL OR b.version = p_expected)
           AND (p_may_write_any OR b.department = p_department);
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;

    v_base := (pg_current_xact_id()::text::bigint + (SELECT xid_offset FROM ledger_position_offset)) * 65536;
    o_hashes := '{}';
    FOR j IN 1 .. p_count LOOP
        e := p_first + j - 1;
        v_head := sha256(v_head || ledger_event_canonical(
            v_base + p_index + j - 1, p_event_ids[e], p_code, v_old + j, p_types[e], p_department, p_amounts[e],
            p_currencies[e], p_occurred_at[e], p_recorded, p_data[e]));
        o_hashes := array_append(o_hashes, v_head);
    END LOOP;

    IF p_expected = 0 THEN
        -- The primary key is the collision check: of any number of concurrent creators of one
        -- code, in any process or batch, exactly one inserts this row.
        INSERT INTO bookings (code, department, version, price_amount, price_currency, head)
        VALUES (p_code, p_department, p_count, v_amount, v_currency, v_head)
        ON CONFLICT (code) DO NOTHING;
        IF FOUND THEN
            o_version := p_count;
        ELSE
            o_hashes := NULL;
        END IF;
        RETURN;
    END IF;
    UPDATE bookings b
       SET version = b.version + p_count,
           price_amount = coalesce(v_amount, b.price_amount),
           price_currency = CASE WHEN v_amount IS NULL THEN b.price_currency ELSE v_currency END,
           updated_at = now(),
           head = v_head
     WHERE b.code = p_code
       AND b.version = v_old
    RETURNING b.version INTO o_version;
END
$fn$
