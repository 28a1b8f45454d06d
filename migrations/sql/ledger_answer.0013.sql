-- ledger_answer: one row of ledger_append_batch's answer (its RETURNS TABLE has the same columns), the
-- row type of the parts that answer for it. Applied by the migration named in the file name.
--   created / appended / replayed   one row per event of the append: the stored event;
--   any other outcome (a refusal)   one row, event columns NULL, `detail` the answer's context.
CREATE TYPE ledger_answer AS (
    append_no       integer,
    outcome         text,
    detail          jsonb,
    "position"      bigint,
    event_id        uuid,
    booking_code    text,
    version         integer,
    type            text,
    price_amount    numeric,
    price_currency  text,
    data            jsonb,
    department      text,
    occurred_at     timestamptz,
    recorded_at     timestamptz
)
