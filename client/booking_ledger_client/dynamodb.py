"""The DynamoDB read store as the client reads it: one Query per booking, items decoded to Events.

Layout (docs/api.md, "Streams out of the ledger"): table `booking_events`, partition key
`booking_code` (S), sort key `version` (N); attributes `event_id`, `type`, `department`,
`position` (N), `recorded_at`, `occurred_at` (when given), `price_amount` + `price_currency` (when
priced, the amount a decimal string), `data` (JSON text, when given) and `hash` (the chain hash). This module knows the
layout on its own: the client does not import the service.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from booking_ledger_client.models import Event, Money, parse_time

Item = Mapping[str, Mapping[str, str]]


def event_of_item(item: Item) -> Event:
    """The Event a read-store item holds; equal to the ledger's answer for the same event."""

    def text(name: str) -> str | None:
        value = item.get(name)
        return value.get("S", value.get("N")) if value is not None else None

    def required(name: str) -> str:
        value = text(name)
        if value is None:
            raise ValueError(f"DynamoDB item of {text('booking_code')} v{text('version')} lacks {name!r}")
        return value

    amount, currency = text("price_amount"), text("price_currency")
    occurred_at, data = text("occurred_at"), text("data")
    return Event(
        event_id=uuid.UUID(required("event_id")),
        booking_code=required("booking_code"),
        version=int(required("version")),
        type=required("type"),
        price=Money(amount, currency) if amount is not None and currency is not None else None,
        data=json.loads(data) if data is not None else None,
        department=required("department"),
        occurred_at=parse_time(occurred_at) if occurred_at is not None else None,
        recorded_at=parse_time(required("recorded_at")),
        position=int(required("position")),
        hash=text("hash"),
    )


def gapless(events: Sequence[Event]) -> list[Event]:
    """Events 1..n of a booking with no gap. The sink writes a batch's items in parallel, so for a
    moment version 3 may be in the table and version 2 not yet: such a tail is not readable yet."""
    prefix: list[Event] = []
    for event in sorted(events, key=lambda e: e.version):
        if event.version != len(prefix) + 1:
            break
        prefix.append(event)
    return prefix


@dataclass(frozen=True)
class QueryPage:
    """One page of a Query: its items and the key to continue after (None: the last page)."""

    items: list[dict[str, Any]]
    last_key: dict[str, Any] | None


class ReadStore:
    """A boto3 DynamoDB client for one table, made on first use (boto3 is the `dynamodb` extra).

    `endpoint` None means AWS's own endpoints; any other endpoint (DynamoDB Local) gets
    placeholder credentials when none are set in the environment.
    """

    def __init__(self, table: str, endpoint: str | None, region: str | None, timeout: float) -> None:
        self.table = table
        self.endpoint = endpoint
        self.region = region
        self.timeout = timeout
        self._client: Any = None

    def _boto(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as error:  # pragma: no cover - depends on the installation
                raise ImportError("the DynamoDB read path needs boto3: pip install 'booking-ledger-client[dynamodb]'") \
                    from error
            options: dict[str, Any] = {
                "config": Config(connect_timeout=self.timeout, read_timeout=self.timeout,
                                 retries={"max_attempts": 3, "mode": "standard"}),
            }
            if self.region:
                options["region_name"] = self.region
            if self.endpoint:
                options["endpoint_url"] = self.endpoint
                if not os.environ.get("AWS_ACCESS_KEY_ID"):
                    # DynamoDB Local accepts any credentials; these are not secrets.
                    options.update(aws_access_key_id="local", aws_secret_access_key="local")
            self._client = boto3.client("dynamodb", **options)
        return self._client

    def query(self, code: str, start_key: Mapping[str, Any] | None) -> QueryPage:
        """One page of the booking's items in version order, read strongly consistently."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "booking_code = :code",
            "ExpressionAttributeValues": {":code": {"S": code}},
            "ConsistentRead": True,
        }
        if start_key is not None:
            request["ExclusiveStartKey"] = dict(start_key)
        client = self._boto()
        try:
            answer: dict[str, Any] = client.query(**request)
        except client.exceptions.ResourceNotFoundException:
            return QueryPage([], None)  # no table yet: nothing has been replicated
        return QueryPage(list(answer.get("Items", [])), answer.get("LastEvaluatedKey"))
