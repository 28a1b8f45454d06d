"""A partition's progress through the sink, as arithmetic on offsets (no broker, no clock).

For each partition it owns, the sink knows the next offset to store (what is below it is in
DynamoDB; -1 while it reads the partition from its beginning and has stored nothing) and the
partition's watermarks as the client cached them at its last fetch (-1 when not known yet).
"""

from __future__ import annotations

NOT_STORED = -1  # the next offset of a partition read from its beginning, before its first store


def start_offset(next_offset: int, low: int, high: int) -> int | None:
    """The first offset not yet in DynamoDB, or None when it cannot be known yet.

    A partition read from its beginning starts at its low watermark; an empty partition whose
    low watermark is not known yet (-1) starts at 0 once its high watermark says it is empty.
    """
    if next_offset >= 0:
        return next_offset
    if low >= 0:
        return low
    return 0 if high == 0 else None


def lag(next_offset: int, low: int, high: int) -> int | None:
    """Messages of the partition not yet written to DynamoDB (None: the watermarks are unknown)."""
    start = start_offset(next_offset, low, high)
    if high < 0 or start is None:
        return None
    return max(0, high - start)
