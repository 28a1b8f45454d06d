"""The app's state: what the handlers of one API worker share, made by the app's lifespan and
closed after it. Handlers take it as their `app_state` dependency (`app_state: InjectedState`); hooks
read it with `app_state_of`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency

from core.settings import Settings
from service.api.limits import RateLimiter, StreamAdmission
from service.console.status import ReadStore
from service.ledger.feedhub import FeedHub
from service.ledger.groupcommit import GroupCommit
from service.ledger.keys import KeyCache
from service.ledger.notify import OutboxNotifier
from service.ledger.personal import DataKeys

APP_STATE = "app_state"  # the name of the dependency, and the state's key in the app's State


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    schema_head: str  # readiness answers 200 only while the schema is at this revision
    pool: asyncpg.Pool
    writer: GroupCommit  # appends, committed in groups
    notifier: OutboxNotifier  # wakes the relay after appends commit
    key_cache: KeyCache
    data_keys: DataKeys  # the bookings' data keys this worker sealed with last
    feed_hub: FeedHub  # the feed's in-memory tail, for the event streams
    streams: StreamAdmission  # the open event streams and their caps
    rate_limiter: RateLimiter
    read_store: ReadStore  # the DynamoDB copy, as the console shows it


# A handler's parameter for the state, injected by its name: declared so (Litestar 3 drops dependencies
# inferred from a parameter's name alone).
InjectedState = NamedDependency[AppState]


def app_state_of(request: ASGIConnection[Any, Any, Any, Any]) -> AppState:
    """The app's state, as the lifespan made it (the provider of the `app_state` dependency)."""
    state: AppState = request.app.state[APP_STATE]
    return state
