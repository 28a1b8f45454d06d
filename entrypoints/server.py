"""Serve the API with granian: several worker processes behind one listening socket.

The schema head the readiness check expects is computed once here, in the parent, from the
migrations, and handed to every worker: the workers never import Alembic or SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from granian import Granian
from granian.constants import Interfaces, Loops

from core.pg import connect_primary
from core.settings import Settings, SettingsError, get_settings
from service.ledger.privileges import privileged_role

if TYPE_CHECKING:
    from litestar import Litestar

# Set by serve() in the parent for its workers (granian starts them as new processes).
_SCHEMA_HEAD_VARIABLE = "BOOKING_LEDGER_SCHEMA_HEAD"


def worker_app() -> Litestar:
    """The app of one granian worker."""
    # Imported here, not at the top: prometheus_client picks its multiprocess mode at import,
    # from PROMETHEUS_MULTIPROC_DIR, which serve() sets first.
    from service.api.app import create_app

    return create_app(schema_head=os.environ[_SCHEMA_HEAD_VARIABLE])


def refuse_privileged_role(settings: Settings) -> None:
    """Raise SettingsError when Postgres answers and the API's role is a superuser or the tables'
    owner (unless LEDGER_ALLOW_PRIVILEGED_ROLE). Postgres down: the API starts, and its readiness
    checks the same once Postgres answers."""
    if settings.database.allow_privileged_role:
        return

    async def check() -> str | None:
        try:
            conn = await connect_primary(settings.database.url, timeout=5)
        except Exception:  # unreachable now: readiness tells, once it is reachable
            return None
        try:
            return await privileged_role(conn, timeout=5)
        finally:
            await conn.close()

    refusal = asyncio.run(check())
    if refusal is not None:
        raise SettingsError(f"the API will not start: {refusal}")


def serve() -> None:
    """Run the API in the foreground until SIGINT/SIGTERM."""
    from migrations.runner import head_revision

    refuse_privileged_role(get_settings())
    http = get_settings().http
    metrics_dir = tempfile.mkdtemp(prefix="booking-ledger-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker
    os.environ[_SCHEMA_HEAD_VARIABLE] = head_revision()
    try:
        Granian(
            "entrypoints.server:worker_app",
            factory=True,
            address=http.host,
            port=http.port,
            interface=Interfaces.ASGI,
            workers=http.workers,
            loop=Loops.uvloop,
            respawn_failed_workers=True,
            log_access=False,
        ).serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
