"""The operations routes: liveness, readiness (Postgres reachable, schema at the code's head) and metrics."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from service.api import metrics
from service.api.openapi import ANY_ROUTE, READY
from service.api.problems import problem
from service.api.state import InjectedState
from service.ledger.db import connection
from service.ledger.errors import StoreUnavailable
from service.ledger.privileges import positions_behind, privileged_role

SCHEMA_VERSION_SQL = "SELECT version_num FROM alembic_version"


class Readiness(msgspec.Struct):
    status: str
    schema: str


@get("/health/live", summary="The process is up", operation_id="live", opt={"problems": ANY_ROUTE})
async def live() -> dict[str, str]:
    return {"status": "live"}


@get("/health/ready", summary="Postgres answers and its schema is at the code's head revision",
     operation_id="ready", opt={"problems": READY})
async def ready(app_state: InjectedState) -> Response[Readiness]:
    expected = app_state.schema_head
    refusal = None
    try:
        async with connection(app_state.pool) as conn:
            refusal = (None if app_state.settings.database.allow_privileged_role
                       else await privileged_role(conn, timeout=2))
            current = await conn.fetchval(SCHEMA_VERSION_SQL, timeout=2)
            behind = await positions_behind(conn, timeout=2) if current == expected else None
    except StoreUnavailable as error:
        return _not_ready(f"Postgres is not reachable: {error.detail}")
    except Exception as error:  # no alembic_version table yet, ...
        if refusal is not None:
            return _not_ready(refusal)
        return _not_ready(f"schema not readable: {type(error).__name__}")
    if refusal is not None:
        return _not_ready(refusal)
    if current != expected:
        return _not_ready(f"schema at {current}, code expects {expected}: run migrate")
    if behind is not None:
        return _not_ready(behind)
    return Response(Readiness(status="ready", schema=current))


def _not_ready(detail: str) -> Response[Any]:
    # Typed loosely on purpose: `ready`'s annotation is what Litestar documents as the 200 body, and
    # Response is invariant in its content type, so the problem answer (bytes) cannot match it exactly.
    return problem(503, "unavailable", detail, {"Retry-After": "1"})


@get("/metrics", summary="Prometheus metrics", media_type="text/plain", operation_id="metrics",
     opt={"problems": ANY_ROUTE})
async def prometheus_metrics(request: Request) -> Response[bytes]:
    body, content_type = metrics.render(request.headers.get("accept", ""))
    # As a header, not as media_type: Litestar appends "; charset=utf-8" to any text/* media type,
    # and a second charset parameter makes Prometheus 3 refuse the scrape.
    return Response(body, headers={"Content-Type": content_type})


HEALTH_ROUTES = [live, ready, prometheus_metrics]
