-- ledger_check_batch_arguments: ledger_append_batch's arrays fit together (one entry per append,
-- p_counts adding up to one entry per event), or the call is refused as a whole. Applied by the
-- migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_check_batch_arguments(
    p_codes text[], p_departments text[], p_may_write_any boolean[], p_expected_versions integer[],
    p_counts integer[], p_event_ids uuid[], p_types text[], p_amounts numeric[], p_currencies text[],
    p_data jsonb[], p_occurred_at timestamptz[]
) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    m       integer := coalesce(cardinality(p_codes), 0);
    total   integer := coalesce(cardinality(p_event_ids), 0);
BEGIN
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
END
$fn$
