-- ledger_data_key: how the data key an append's personal data was sealed with (p_key) stands with
-- booking p_code's key in personal_keys: 'new' (the booking has none yet: the append stores p_key),
-- 'held' (it is the booking's key), 'stale' (the booking has another: the API reads it and seals
-- again) or 'erased' (the booking's personal data was erased: no more is taken). Applied by the
-- migration named in the file name. Called under the booking's lock (ledger_acquire_locks), which
-- every writer of a key holds but the erasure, which only ever makes a key NULL. PL/pgSQL, not SQL:
-- its query's plan is kept for the session (a SQL function with a subquery is planned on every call).
CREATE OR REPLACE FUNCTION ledger_data_key(p_code text, p_key bytea) RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_stored    bytea;
BEGIN
    SELECT k.data_key INTO v_stored FROM personal_keys k WHERE k.booking_code = p_code;
    RETURN CASE WHEN NOT FOUND THEN 'new'
                WHEN v_stored IS NULL THEN 'erased'
                WHEN v_stored = p_key THEN 'held'
                ELSE 'stale' END;
END
$fn$
