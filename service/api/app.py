"""The app factory: assembles routes, error mapping and OpenAPI, and opens the asyncpg pool in the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide

from core import logs, tracing
from core.settings import Settings, get_settings
from service.api import metrics
from service.api.audit_routes import AUDIT_ROUTES
from service.api.health import HEALTH_ROUTES
from service.api.http_rules import http_rules
from service.api.limits import RateLimiter, StreamAdmission
from service.api.openapi import openapi_config
from service.api.price_routes import PRICE_ROUTES
from service.api.problems import EXCEPTION_HANDLERS
from service.api.requestlog import request_log
from service.api.routes import MAX_BODY_BYTES, ROUTES
from service.api.schemas import append_request_schema
from service.api.state import APP_STATE, AppState, app_state_of
from service.api.stream import STREAM_ROUTES, sse_message
from service.api.subscription_routes import SUBSCRIPTION_ROUTES, subscription_request_schema
from service.console.routes import console, template_config
from service.console.status import ReadStore
from service.ledger.db import create_pool
from service.ledger.feedhub import FeedHub
from service.ledger.groupcommit import GroupCommit
from service.ledger.keys import KeyCache
from service.ledger.notify import OutboxNotifier
from service.ledger.personal import DataKeys


@asynccontextmanager
async def _running(settings: Settings, schema_head: str) -> AsyncIterator[AppState]:
    """The app's state for as long as the app runs: the pool and the tasks over it, closed after."""
    exporting = bool(settings.tracing.otlp_endpoint)
    if exporting:
        tracing.configure("api", settings.tracing.otlp_endpoint)
    pool = await create_pool(settings.database)
    writer = GroupCommit(pool, settings.database.batch_max_events, settings.database.batch_max_bytes,
                         on_batch=metrics.APPEND_BATCH_SIZE.observe)
    notifier = OutboxNotifier(settings.database.url)
    notifier.start()
    key_cache = KeyCache(settings.database.url, on_listening=metrics.KEY_LISTENER_UP.set)
    key_cache.start()
    feed_hub = FeedHub(pool, settings.database.url, settings.stream.buffer_bytes, encode=sse_message)
    feed_hub.start_tasks()
    try:
        yield AppState(settings=settings, schema_head=schema_head, pool=pool, writer=writer, notifier=notifier,
                       key_cache=key_cache, data_keys=DataKeys(pool), feed_hub=feed_hub,
                       streams=StreamAdmission(settings.stream, feed_hub),
                       rate_limiter=RateLimiter(settings.http.rate_limit), read_store=ReadStore(settings.dynamo))
    finally:
        await feed_hub.stop()
        await key_cache.stop()
        await notifier.stop()
        await writer.close()
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()
        if exporting:
            tracing.shutdown()


def create_app(schema_head: str, settings: Settings | None = None) -> Litestar:
    """The API and the console; readiness answers 200 only while the schema is at `schema_head`."""
    settings = settings or get_settings()
    logs.configure()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with _running(settings, schema_head) as state:
            app.state[APP_STATE] = state
            yield

    handlers = [*ROUTES, *PRICE_ROUTES, *AUDIT_ROUTES, *STREAM_ROUTES, *SUBSCRIPTION_ROUTES, *HEALTH_ROUTES]
    # What each operation documents as its problem answers (service/api/openapi.py finishes the document).
    problems = {str(handler.operation_id): handler.opt["problems"] for handler in handlers}
    app = Litestar(
        route_handlers=[*handlers, console],
        lifespan=[lifespan],
        dependencies={APP_STATE: Provide(app_state_of, sync_to_thread=False)},
        middleware=[request_log],
        logging_config=None,  # core.logs owns logging: one format for every line
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=openapi_config(problems),
        template_config=template_config(),
    )
    # Outside the router, so that its own answers (404, 405) get the same headers, and HEAD
    # reaches the GET handlers instead of a 405.
    app.asgi_handler = http_rules(app.asgi_handler)
    # The append body is decoded by the route itself (strictly), so the framework does not see
    # its type; add its JSON Schema, made by msgspec, to the generated (and cached) document.
    _, append_components = append_request_schema()
    app.openapi_schema.components.schemas.update(append_components)
    app.openapi_schema.components.schemas.update(subscription_request_schema())
    return app
