"""The operations routes: liveness, readiness (Postgres reachable, schema at the code's head) and metrics."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from service.api import metrics
from service.api.problems import PROBLEM_JSON, problem
from service.api.schemas import Problem
from service.ledger.db import connection
from service.ledger.errors import StoreUnavailable

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
async def prometheus_metrics() -> Response[bytes]:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


HEALTH_ROUTES = [live, ready, prometheus_metrics]
