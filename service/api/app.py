"""The app factory: assembles routes, error mapping and OpenAPI, and opens the asyncpg pool in the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State

from core import logs
from core.settings import Settings, get_settings
from service.api import metrics
from service.api.auth import RateLimiter
from service.api.health import HEALTH_ROUTES
from service.api.http_rules import http_rules
from service.api.openapi import openapi_config
from service.api.price_routes import PRICE_ROUTES
from service.api.problems import EXCEPTION_HANDLERS
from service.api.requestlog import request_log
from service.api.routes import MAX_BODY_BYTES, ROUTES
from service.api.schemas import append_request_schema
from service.api.stream import STREAM_ROUTES, StreamAdmission, sse_message
from service.console.routes import console, template_config
from service.console.status import ReadStore
from service.ledger.db import create_pool
from service.ledger.feedhub import FeedHub
from service.ledger.groupcommit import GroupCommit
from service.ledger.keys import KeyCache
from service.ledger.notify import OutboxNotifier


def create_app(schema_head: str, settings: Settings | None = None) -> Litestar:
    """The API and the console; readiness answers 200 only while the schema is at `schema_head`."""
    settings = settings or get_settings()
    logs.configure()

    @asynccontextmanager
    async def pool_lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings.database)
        app.state.writer = GroupCommit(app.state.pool, settings.database.batch_max_events,
                                       settings.database.batch_max_bytes, on_batch=metrics.APPEND_BATCH_SIZE.observe)
        app.state.notifier = OutboxNotifier(app.state.pool)
        app.state.notifier.start()
        app.state.key_cache = KeyCache(settings.database.url)
        app.state.key_cache.start()
        app.state.feed_hub = FeedHub(app.state.pool, settings.database.url, settings.stream.buffer_bytes,
                                     encode=sse_message)
        app.state.feed_hub.start_tasks()
        app.state.streams = StreamAdmission(settings.stream, app.state.feed_hub)
        try:
            yield
        finally:
            await app.state.feed_hub.stop()
            await app.state.key_cache.stop()
            await app.state.notifier.stop()
            await app.state.writer.close()
            try:
                await asyncio.wait_for(app.state.pool.close(), timeout=10)
            except TimeoutError:
                app.state.pool.terminate()

    app = Litestar(
        route_handlers=[*ROUTES, *PRICE_ROUTES, *STREAM_ROUTES, *HEALTH_ROUTES, console],
        lifespan=[pool_lifespan],
        middleware=[request_log],
        logging_config=None,  # core.logs owns logging: one format for every line
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=openapi_config(),
        template_config=template_config(),
        state=State({"rate_limiter": RateLimiter(settings.http.rate_limit), "schema_head": schema_head,
                     "body_timeout": settings.http.body_timeout,
                     "allow_privileged_role": settings.database.allow_privileged_role,
                     "read_store": ReadStore(settings.dynamo)}),
    )
    # Outside the router, so that its own answers (404, 405) get the same headers, and HEAD
    # reaches the GET handlers instead of a 405.
    app.asgi_handler = http_rules(app.asgi_handler)
    # The append body is decoded by the route itself (strictly), so the framework does not see
    # its type; add its JSON Schema, made by msgspec, to the generated (and cached) document.
    _, append_components = append_request_schema()
    app.openapi_schema.components.schemas.update(append_components)
    return app
