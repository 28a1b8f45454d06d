-- ledger_booking_refusal: why ledger_advance_booking refused an append, from the booking as it is:
-- booking_code_taken (a create; the owner), booking_not_found, not_owner (the owner) or
-- version_conflict (the current version). Applied by the migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_booking_refusal(
    p_append_no integer, p_code text, p_department text, p_may_write_any boolean, p_expected integer
) RETURNS SETOF ledger_answer
LANGUAGE plpgsql AS $fn$
DECLARE
    v_owner     text;
    v_current   integer;
BEGIN
    SELECT b.department, b.version INTO v_owner, v_current FROM bookings b WHERE b.code = p_code;
    IF p_expected = 0 THEN
        RETURN QUERY SELECT * FROM ledger_refusal(p_append_no, 'booking_code_taken',
                                                  jsonb_build_object('department', v_owner));
    ELSIF v_owner IS NULL THEN
        RETURN QUERY SELECT * FROM ledger_refusal(p_append_no, 'booking_not_found', NULL);
    ELSIF NOT p_may_write_any AND v_owner <> p_department THEN
        RETURN QUERY SELECT * FROM ledger_refusal(p_append_no, 'not_owner', jsonb_build_object('department', v_owner));
    ELSE
        RETURN QUERY SELECT * FROM ledger_refusal(p_append_no, 'version_conflict',
                                                  jsonb_build_object('current_version', v_current));
    END IF;
END
$fn$
