-- ledger_advance_booking: the booking row of one append, written: created (p_expected 0) or moved
-- on by p_count versions, its price the last one the append sets (entries p_first .. p_first +
-- p_count - 1 of the per-event arrays), if any. Returns the booking's new version, or NULL when
-- the append is refused (ledger_booking_refusal says why); then nothing was written. Applied by
-- the migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_advance_booking(
    p_code text, p_department text, p_may_write_any boolean, p_expected integer,
    p_amounts numeric[], p_currencies text[], p_first integer, p_count integer
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_amount    numeric;
    v_currency  text;
    v_version   integer;
BEGIN
    FOR j IN REVERSE p_first + p_count - 1 .. p_first LOOP
        IF p_amounts[j] IS NOT NULL THEN
            v_amount := p_amounts[j];
            v_currency := p_currencies[j];
            EXIT;
        END IF;
    END LOOP;

    IF p_expected = 0 THEN
        -- The primary key is the collision check: of any number of concurrent creators of one
        -- code, in any process or batch, exactly one inserts this row.
        INSERT INTO bookings (code, department, version, price_amount, price_currency)
        VALUES (p_code, p_department, p_count, v_amount, v_currency)
        ON CONFLICT (code) DO NOTHING;
        RETURN CASE WHEN FOUND THEN p_count END;
    END IF;
    -- NULL expected: at whatever version the booking is.
    UPDATE bookings b
       SET version = b.version + p_count,
           price_amount = coalesce(v_amount, b.price_amount),
           price_currency = CASE WHEN v_amount IS NULL THEN b.price_currency ELSE v_currency END,
           updated_at = now()
     WHERE b.code = p_code
       AND (p_expected IS NULL OR b.version = p_expected)
       AND (p_may_write_any OR b.department = p_department)
    RETURNING b.version INTO v_version;
    RETURN v_version;
END
$fn$
