-- ledger_suspect_event_ids: of a batch's event ids, those already recorded and those it carries
-- more than once (NULL when there are none). Only an append carrying one of them can be a retry or
-- an event_id conflict; every other append skips those checks. Called with every lock held.
-- Applied by the migration named in the file name.
--
-- Planned anew on every call (EXECUTE), with the ids at hand: a generic plan cached by a session
-- that started while `events` was small is a sequential scan, which the session would keep for its
-- life while the table grows (measured: 0.4 -> 1.4 ms per append within a minute; 0012).
CREATE OR REPLACE FUNCTION ledger_suspect_event_ids(p_event_ids uuid[]) RETURNS uuid[]
LANGUAGE plpgsql AS $fn$
DECLARE
    v_suspects  uuid[];
BEGIN
    EXECUTE 'SELECT array_agg(s.id) FROM ('
            '    SELECT e.event_id AS id FROM events e WHERE e.event_id = ANY ($1)'
            '    UNION ALL'
            '    SELECT x FROM unnest($1) x GROUP BY x HAVING count(*) > 1'
            ') s'
       INTO v_suspects USING p_event_ids;
    RETURN v_suspects;
END
$fn$
