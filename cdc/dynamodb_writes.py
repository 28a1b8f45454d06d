"""Batch writes to the DynamoDB read store that never skip an item (the sink and replay use them).

Table `booking_events` (LEDGER_DYNAMODB_TABLE; its layout and items: core/dynamodb.py), for whoever
provisions it in AWS:
  partition key booking_code (S), sort key version (N), on-demand capacity. Attributes:
  event_id, type, department, position (N), recorded_at, occurred_at (when given),
  price_amount + price_currency (when priced, amount as a decimal string), data (JSON text,
  when given), hash. Items are written whole with PutItem semantics: rewriting the ledger's content
  for a (booking_code, version) changes nothing, which is what makes redelivery harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import msgspec
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter

from cdc.backoff import Backoff, Stopped
from core import personal
from core.dynamodb import Item, ensure_table

log = logging.getLogger("booking_ledger.dynamodb")

BATCH_LIMIT = 25  # BatchWriteItem's maximum


def write_items(
    dynamodb,
    table: str,
    items: Sequence[Item],
    *,
    executor: ThreadPoolExecutor | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[], None] = lambda: None,
    backoff: Backoff | None = None,
    retries: Counter | None = None,
) -> None:
    """Write every item, retrying throttling, UnprocessedItems and outages with capped backoff.

    Returns only when all items are written; raises Stopped if `should_stop()` turns true
    first. Chunks of 25 go out in parallel on `executor`; meanwhile the calling thread runs
    `on_wait` every half second (the sink keeps its consumer group membership alive there).
    Each retry counts in `retries` (labelled `unprocessed` or `error`) when given.
    """
    backoff = backoff or Backoff(log)
    unique = _dedupe(items)
    chunks = [unique[i : i + BATCH_LIMIT] for i in range(0, len(unique), BATCH_LIMIT)]
    if executor is None:
        for chunk in chunks:
            _write_chunk(dynamodb, table, chunk, should_stop, backoff, retries)
        return
    futures = [executor.submit(_write_chunk, dynamodb, table, chunk, should_stop, backoff, retries) for chunk in chunks]
    while wait(futures, timeout=0.5).not_done:
        on_wait()
    for future in futures:
        future.result()


def _write_chunk(
    dynamodb, table: str, chunk: list[Item], should_stop: Callable[[], bool], backoff: Backoff,
    retries: Counter | None,
) -> None:
    while chunk:
        try:
            answer = dynamodb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": i}} for i in chunk]})
            chunk = [r["PutRequest"]["Item"] for r in answer.get("UnprocessedItems", {}).get(table, [])]
            if not chunk:
                backoff.succeeded("DynamoDB accepts writes again")
                return
            if retries is not None:
                retries.labels("unprocessed").inc()
            delay = backoff.failed("DynamoDB left %d items unprocessed (throttled); retrying", len(chunk))
        except (ClientError, BotoCoreError) as error:
            if isinstance(error, ClientError) and error.response["Error"]["Code"] == "ResourceNotFoundException":
                log.warning("DynamoDB table %s is missing: creating it again", table)
                try:
                    ensure_table(dynamodb, table)
                    continue
                except (ClientError, BotoCoreError) as again:
                    error = again
            if retries is not None:
                retries.labels("error").inc()
            delay = backoff.failed("DynamoDB write failed, retrying: %s", error)
        _sleep(delay, should_stop)


def _dedupe(items: Iterable[Item]) -> list[Item]:
    """One item per key (BatchWriteItem refuses duplicates); later items win, content is equal anyway."""
    by_key: dict[tuple[str, str], Item] = {}
    for item in items:
        by_key[(item["booking_code"]["S"], item["version"]["N"])] = item
    return list(by_key.values())


def _sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not should_stop():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, 0.2))
    raise Stopped()


def delete_keys(dynamodb, table: str, keys: Sequence[tuple[str, int]], backoff: Backoff | None = None) -> None:
    """Delete the items of these (booking_code, version) keys, 25 a call, retrying unprocessed ones
    (throttling) with capped backoff; an absent item is no error."""
    backoff = backoff or Backoff(log)
    requests = [{"DeleteRequest": {"Key": {"booking_code": {"S": code}, "version": {"N": str(version)}}}}
                for code, version in dict.fromkeys(keys)]
    while requests:
        chunk, requests = requests[:BATCH_LIMIT], requests[BATCH_LIMIT:]
        answer = dynamodb.batch_write_item(RequestItems={table: chunk})
        unprocessed = answer.get("UnprocessedItems", {}).get(table, [])
        if unprocessed:
            requests = unprocessed + requests
            time.sleep(backoff.failed("DynamoDB left %d deletes unprocessed (throttled); retrying", len(unprocessed)))
        else:
            backoff.succeeded("DynamoDB accepts deletes again")


def erase_personal(dynamodb, table: str, code: str, **writing) -> None:
    """Rewrite every item of booking `code` whose data carries sealed personal data with
    `"personal": "erased"` instead (after its key was destroyed); `writing` as for write_items."""
    rewritten: list[Item] = []
    query: dict = {"TableName": table, "KeyConditionExpression": "booking_code = :c",
                   "ExpressionAttributeValues": {":c": {"S": code}}, "ConsistentRead": True}
    while True:
        page = dynamodb.query(**query)
        for item in page.get("Items", []):
            text = item.get("data", {}).get("S")
            data = msgspec.json.decode(text) if text is not None else None
            if personal.sealed_in(data) is not None:
                # Written as item_of writes data (msgspec's compact JSON), so verify finds it equal.
                rewritten.append({**item, "data": {"S": msgspec.json.encode(personal.erased(data)).decode()}})
        if "LastEvaluatedKey" not in page:
            break
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    if rewritten:
        write_items(dynamodb, table, rewritten, **writing)
