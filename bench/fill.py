"""Ledger content for the bench, written through ledger_append itself (so positions, outbox rows
and bookings are what the API would have made), many appends per round trip.
"""

from __future__ import annotations

import asyncio

import asyncpg

# One transaction per append (the function must be the first write of its transaction): a DO
# block that commits after each call. $n placeholders cannot reach into DO, hence the format().
_FILL = """
DO $fill$
DECLARE
    i integer;
BEGIN
    FOR i IN 0..{appends} - 1 LOOP
        PERFORM ledger_append(
            '{prefix}' || (i % {bookings}), 'bench', false, CASE WHEN i < {bookings} THEN 0 END,
            (SELECT array_agg(gen_random_uuid()) FROM generate_series(1, {per_append})),
            array_fill('PriceChanged'::text, ARRAY[{per_append}]),
            array_fill(123.45::numeric, ARRAY[{per_append}]),
            array_fill('EUR'::text, ARRAY[{per_append}]),
            array_fill('{{"reason": "bench"}}'::jsonb, ARRAY[{per_append}]),
            array_fill(NULL::timestamptz, ARRAY[{per_append}]));
        COMMIT;
    END LOOP;
END
$fill$;
"""


async def _fill(url: str, prefix: str, bookings: int, appends: int, per_append: int, parallel: int) -> None:
    """`appends` appends of `per_append` events spread over bookings `{prefix}0..`, in `parallel` sessions."""
    share = -(-bookings // parallel)

    async def part(n: int) -> None:
        owned = min(share, bookings - n * share)
        if owned <= 0:
            return
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(_FILL.format(prefix=f"{prefix}{n}-" if parallel > 1 else prefix, bookings=owned,
                                            appends=max(owned, appends * owned // bookings), per_append=per_append))
        finally:
            await conn.close()

    await asyncio.gather(*(part(n) for n in range(parallel)))


def fill(url: str, prefix: str, bookings: int, appends: int | None = None, per_append: int = 1,
         parallel: int = 1) -> None:
    asyncio.run(_fill(url, prefix, bookings, appends or bookings, per_append, parallel))
