-- ledger_event_canonical: the canonical form of one event, the bytes its chain hash covers
-- (docs/api.md, "The hash chain", says it in words; tests/integration/test_chain.py computes it
-- again from those words). Twelve lines, each ended by a line feed, in UTF-8:
--   booking-ledger event v1, position, event_id, booking_code, version, type, department,
--   price amount (as stored, e.g. 120.00), price currency, occurred_at, recorded_at, data;
-- an absent price, occurred_at or data is an empty line; a time is whole microseconds since
-- 1970-01-01T00:00:00Z; data is Postgres' text of the jsonb value. No field can hold a line feed
-- (codes, types and departments are patterned; jsonb text escapes it). Applied by the migration
-- named in the file name. A plain SQL function: a query that calls it has it inlined.
CREATE OR REPLACE FUNCTION ledger_event_canonical(
    p_position bigint, p_event_id uuid, p_code text, p_version integer, p_type text, p_department text,
    p_amount numeric, p_currency text, p_occurred timestamptz, p_recorded timestamptz, p_data jsonb
) RETURNS bytea
LANGUAGE sql STABLE AS $fn$
    SELECT convert_to(concat_ws(E'\n', 'booking-ledger event v1', p_position, p_event_id, p_code, p_version,
                                p_type, p_department, coalesce(p_amount::text, ''), coalesce(p_currency, ''),
                                coalesce(ledger_microseconds(p_occurred), ''), ledger_microseconds(p_recorded),
                                coalesce(p_data::text, ''), ''),
                      'UTF8')
$fn$
