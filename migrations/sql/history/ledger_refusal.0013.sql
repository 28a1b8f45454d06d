-- ledger_refusal: the answer of an append that is refused; it writes nothing. Applied by the
-- migration named in the file name. A plain SQL function, so a query that calls it has it inlined.
CREATE OR REPLACE FUNCTION ledger_refusal(p_append_no integer, p_outcome text, p_detail jsonb)
RETURNS SETOF ledger_answer
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT p_append_no, p_outcome, p_detail, NULL::bigint, NULL::uuid, NULL::text, NULL::integer, NULL::text,
           NULL::numeric, NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::timestamptz
$fn$
