"""The app factory: routes, error mapping, OpenAPI, and the asyncpg pool opened in the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme

from core import logs
from core.settings import Settings, get_settings
from migrations.runner import head_revision
from service.api import metrics
from service.api.auth import RateLimiter
from service.api.console import console, template_config
from service.api.requestlog import request_log
from service.api.problems import EXCEPTION_HANDLERS, PROBLEM_JSON, problem
from service.api.routes import MAX_BODY_BYTES, ROUTES
from service.api.schemas import Problem, append_request_schema
from service.ledger.db import connection, create_pool
from service.ledger.errors import StoreUnavailable
from service.ledger.keys import KeyCache
from service.ledger.notify import OutboxNotifier
from service.ledger.status import ReadStore

SCHEMA_VERSION_SQL = "SELECT version_num FROM alembic_version"


@get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "live"}


@get("/health/ready", summary="Postgres answers and its schema is at the code's head revision",
     responses={503: ResponseSpec(Problem, description="not ready", media_type=PROBLEM_JSON, generate_examples=False)})
async def ready(request: Request) -> Response[dict[str, str] | bytes]:
    expected = request.app.state.schema_head
    try:
        async with connection(request.app.state.pool) as conn:
            current = await conn.fetchval(SCHEMA_VERSION_SQL, timeout=2)
    except StoreUnavailable as error:
        return problem(503, "unavailable", f"Postgres is not reachable: {error.detail}", {"Retry-After": "1"})
    except Exception as error:  # no alembic_version table yet, ...
        return problem(503, "unavailable", f"schema not readable: {type(error).__name__}", {"Retry-After": "1"})
    if current != expected:
        return problem(503, "unavailable", f"schema at {current}, code expects {expected}: run migrate",
                       {"Retry-After": "1"})
    return Response({"status": "ready", "schema": current})


@get("/metrics", summary="Prometheus metrics", media_type="text/plain")
async def prometheus_metrics(request: Request) -> Response[bytes]:
    body, content_type = metrics.render(request.headers.get("accept", ""))
    # As a header, not as media_type: Litestar appends "; charset=utf-8" to any text/* media type,
    # and a second charset parameter makes Prometheus 3 refuse the scrape.
    return Response(body, headers={"Content-Type": content_type})


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="booking-ledger",
        version="1",
        description="The booking price ledger. Every /v1 route takes 'Authorization: Bearer <api-key>'.",
        path="/schema",
        components=Components(security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer")}),
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    logs.configure()

    @asynccontextmanager
    async def pool_lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings.database)
        app.state.notifier = OutboxNotifier(app.state.pool)
        app.state.notifier.start()
        app.state.key_cache = KeyCache(settings.database.url)
        app.state.key_cache.start()
        try:
            yield
        finally:
            await app.state.key_cache.stop()
            await app.state.notifier.stop()
            try:
                await asyncio.wait_for(app.state.pool.close(), timeout=10)
            except asyncio.TimeoutError:
                app.state.pool.terminate()

    app = Litestar(
        route_handlers=[*ROUTES, live, ready, prometheus_metrics, console],
        lifespan=[pool_lifespan],
        middleware=[request_log],
        logging_config=None,  # core.logs owns logging: one format for every line
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=_openapi(),
        template_config=template_config(),
        state=State({"rate_limiter": RateLimiter(settings.http.rate_limit), "schema_head": head_revision(),
                     "read_store": ReadStore(settings.dynamo)}),
    )
    # The append body is decoded by the route itself (strictly), so the framework does not see
    # its type; add its JSON Schema, made by msgspec, to the generated (and cached) document.
    _, append_components = append_request_schema()
    app.openapi_schema.components.schemas.update(append_components)  # type: ignore[union-attr,arg-type]
    return app
