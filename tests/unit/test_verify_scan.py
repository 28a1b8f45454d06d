"""cdc/verify.py's segmented Scan: segments by the table's size, a few at a time, every item once."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from cdc import verify


def test_a_scan_has_one_segment_per_segment_items() -> None:
    assert verify.scan_segments(0) == 1
    assert verify.scan_segments(verify.SEGMENT_ITEMS) == 1
    assert verify.scan_segments(verify.SEGMENT_ITEMS + 1) == 2
    assert verify.scan_segments(20_000_000) == 20_000_000 // verify.SEGMENT_ITEMS
    assert verify.scan_segments(10**13) == verify.MAX_SEGMENTS


def test_every_item_is_read_once_with_a_bounded_number_of_segments_under_way() -> None:
    segments, page = 11, 3
    table = {s: [{"n": {"N": f"{s}-{i}"}} for i in range(s * 2)] for s in range(segments)}  # segment 0 is empty
    lock = threading.Lock()
    under_way: set[int] = set()
    most = 0

    def scan(segment: int, total: int, start: dict | None) -> dict:
        nonlocal most
        assert total == segments
        with lock:
            under_way.add(segment)
            most = max(most, len(under_way))
        offset = 0 if start is None else start["offset"]
        items = table[segment][offset:offset + page]
        answer: dict = {"Items": items}
        if offset + page < len(table[segment]):
            answer["LastEvaluatedKey"] = {"offset": offset + page}
        else:
            with lock:
                under_way.discard(segment)
        return answer

    async def read_all() -> list[str]:
        seen: list[str] = []
        with ThreadPoolExecutor(8) as executor:
            async for items in verify._scanned(asyncio.get_running_loop(), executor, scan, segments):
                seen.extend(item["n"]["N"] for item in items)
        return seen

    seen = asyncio.run(read_all())
    assert sorted(seen) == sorted(item["n"]["N"] for items in table.values() for item in items)
    assert 1 < most <= verify.SCAN_PARALLEL
