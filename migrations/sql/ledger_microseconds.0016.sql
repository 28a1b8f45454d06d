-- ledger_microseconds: a time in the canonical form of an event (ledger_event_canonical): whole
-- microseconds since 1970-01-01T00:00:00Z, in decimal; infinity and -infinity (stored before 0005
-- only) as those words. Applied by the migration named in the file name.
CREATE OR REPLACE FUNCTION ledger_microseconds(p_moment timestamptz) RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT CASE WHEN isfinite(p_moment) THEN (extract(epoch FROM p_moment) * 1000000)::bigint::text
                ELSE p_moment::text END
$fn$
