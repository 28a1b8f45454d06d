"""The DynamoDB client every process uses: the sink and replay write with it, the console reads."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from core.settings import DynamoSettings


def client(settings: DynamoSettings, *, connect_timeout: float = 2, read_timeout: float = 10, attempts: int = 2):
    """A low-level DynamoDB client; local endpoints get placeholder credentials when none are set."""
    options: dict[str, Any] = {
        "region_name": settings.region,
        "config": Config(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=32,
        ),
    }
    if settings.endpoint_url:
        options["endpoint_url"] = settings.endpoint_url
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            # DynamoDB Local (-sharedDb) accepts any credentials; these are not secrets.
            options.update(aws_access_key_id="local", aws_secret_access_key="local")
    return boto3.client("dynamodb", **options)
