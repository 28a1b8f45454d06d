"""The DynamoDB read store's layout and client: what the sink, replay and verify write and compare,
what the console reads (docs/api.md, "Streams out of the ledger"). The writer (batches, retries)
is cdc/dynamodb_writes.py."""

from __future__ import annotations

import logging
import os
from typing import Any

import boto3
import msgspec
from botocore.config import Config

from core import personal
from core.events import Event
from core.settings import DynamoSettings

log = logging.getLogger("booking_ledger.dynamodb")

Item = dict[str, dict[str, str]]
PARTITION_KEY, SORT_KEY = "booking_code", "version"


def client(settings: DynamoSettings, *, connect_timeout: float = 2, read_timeout: float = 10, attempts: int = 2,
           validate: bool = True):
    """A low-level DynamoDB client; local endpoints get placeholder credentials when none are set.

    `validate=False` skips botocore's check of every parameter against the API's model before a call,
    for the writers and readers of many items whose requests this module builds (`item_of`, keys):
    the check cost about 27 µs an item of a BatchWriteItem, serializing it 15 (bench/README.md, issue 26).
    A malformed request is still refused, by DynamoDB (ValidationException)."""
    options: dict[str, Any] = {
        "region_name": settings.region,
        "config": Config(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=32,
            parameter_validation=validate,
        ),
    }
    if settings.endpoint_url:
        options["endpoint_url"] = settings.endpoint_url
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            # DynamoDB Local (-sharedDb) accepts any credentials; these are not secrets.
            options.update(aws_access_key_id="local", aws_secret_access_key="local")
    return boto3.client("dynamodb", **options)


def read_raw(dynamodb, operations: tuple[str, ...] = ("Scan", "BatchGetItem")) -> None:
    """Let these operations' successful answers skip botocore's attribute-by-attribute parsing,
    most of the client's CPU on large reads (verify): the JSON body is decoded by msgspec into the
    same shapes (DynamoDB's wire format is what the low-level client returns; numbers stay strings).
    Errors are still parsed by botocore, and its checksum check reads the HTTP response itself."""
    for operation in operations:
        dynamodb.meta.events.register(f"before-parse.dynamodb.{operation}", _decode_raw)


def _decode_raw(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    if response_dict.get("status_code") == 200 and response_dict.get("body"):
        customized_response_dict.update(msgspec.json.decode(response_dict["body"]))
        response_dict["body"] = b"{}"


def ensure_table(dynamodb, table: str, timeout: float = 60) -> None:
    """Create the events table when it is missing (the local stack; AWS may pre-provision it)."""
    try:
        dynamodb.describe_table(TableName=table)
        return
    except dynamodb.exceptions.ResourceNotFoundException:
        pass
    try:
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
                       {"AttributeName": SORT_KEY, "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"},
                                  {"AttributeName": SORT_KEY, "AttributeType": "N"}],
            BillingMode="PAY_PER_REQUEST",
        )
        log.info("created DynamoDB table %s", table)
    except dynamodb.exceptions.ResourceInUseException:
        pass  # created by someone else meanwhile
    dynamodb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": int(timeout)})


def item_of(event: Event, erased: bool = False) -> Item:
    """The DynamoDB item of an event, in the layout docs/api.md gives; `erased`: its booking's personal
    data was erased, and the item shows `"personal": "erased"` instead of the ciphertext."""
    item: Item = {
        PARTITION_KEY: {"S": event.booking_code},
        SORT_KEY: {"N": str(event.version)},
        "event_id": {"S": str(event.event_id)},
        "type": {"S": event.type},
        "department": {"S": event.department},
        "position": {"N": str(event.position)},
        "recorded_at": {"S": _timestamp(event.recorded_at)},
    }
    if event.occurred_at is not None:
        item["occurred_at"] = {"S": _timestamp(event.occurred_at)}
    if event.price is not None:
        item["price_amount"] = {"S": event.price.amount}
        item["price_currency"] = {"S": event.price.currency}
    if event.data is not None:
        data = personal.erased(event.data) if erased else event.data
        item["data"] = {"S": msgspec.json.encode(data).decode()}
    if event.hash is not None:
        item["hash"] = {"S": event.hash}
    return item


def _timestamp(value) -> str:
    return msgspec.json.encode(value).decode().strip('"')


def latest_version_query(table: str, code: str) -> dict[str, Any]:
    """The Query (its keyword arguments) that reads a booking's latest version in the read store."""
    return {"TableName": table, "KeyConditionExpression": f"{PARTITION_KEY} = :c",
            "ExpressionAttributeValues": {":c": {"S": code}}, "ProjectionExpression": SORT_KEY,
            "ScanIndexForward": False, "Limit": 1, "ConsistentRead": True}
