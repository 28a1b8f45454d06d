"""Serve the API with granian: several worker processes behind one listening socket."""

from __future__ import annotations

import os
import shutil
import tempfile

from granian import Granian
from granian.constants import Interfaces, Loops

from core.settings import get_settings


def serve() -> None:
    """Run the API in the foreground until SIGINT/SIGTERM."""
    http = get_settings().http
    metrics_dir = tempfile.mkdtemp(prefix="booking-ledger-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker
    try:
        Granian(
            "service.api.app:create_app",
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
