"""Settings, one typed struct per concern, read from the environment once.

Every setting is optional; with none set, every command targets the local stack that
`make run` starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _env_str(name: str, default: str, doc: str):
    return field(default_factory=lambda: os.environ.get(name, default), metadata={"env": name, "doc": doc})


def _env_int(name: str, default: int, doc: str, minimum: int = 0):
    def read() -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    return field(default_factory=read, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _env_str(
        "LEDGER_DATABASE_URL",
        "postgresql://ledger@127.0.0.1:55432/ledger",
        "Postgres holding the ledger (the system of record).",
    )
    pool_size: int = _env_int("LEDGER_DB_POOL_SIZE", 16, "Connections per API worker process.", minimum=1)
    command_timeout: int = _env_int(
        "LEDGER_DB_TIMEOUT", 10, "Seconds a statement may take before the request answers 503.", minimum=1
    )


@dataclass(frozen=True)
class HttpSettings:
    host: str = _env_str("LEDGER_HTTP_HOST", "127.0.0.1", "Address the API listens on.")
    port: int = _env_int("LEDGER_HTTP_PORT", 8000, "Port the API listens on.", minimum=1)
    workers: int = _env_int("LEDGER_HTTP_WORKERS", 2, "API worker processes.", minimum=1)
    rate_limit: int = _env_int(
        "LEDGER_RATE_LIMIT", 5000, "Requests per second per API key in each worker process; 0 turns it off."
    )


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    http: HttpSettings = field(default_factory=HttpSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    return Settings()
