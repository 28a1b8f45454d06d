"""The project's own Docker engine for the container tests, started once per session.

The session fixture starts dockerd (devstack/docker.py) unless it already runs, builds the images
that are missing or out of date (cached in .local/docker between runs), and at the end removes the
containers these tests made and stops the engine when it started it. Under `make test` the session
has started both beside its first tests (tests/conftest.py, --docker-images-early): the fixture
waits for that build and finds the images made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from devstack.docker import Engine, Images, prepare
from tests.conftest import DOCKER_SUMMARY

TEST_PROJECT_PREFIX = "booking-ledger-test-"
TIMINGS: dict[str, float] = {}
SIZES: dict[str, int] = {}


@pytest.fixture(scope="session")
def docker_engine(pytestconfig: pytest.Config) -> Iterator[Engine]:
    engine = Engine()
    started_at = time.monotonic()
    # Waits for `make test`'s early build (tests/conftest.py), when one runs, and finds the images built.
    started, timings = prepare(engine)
    TIMINGS["engine start and image builds"] = round(time.monotonic() - started_at, 1)
    # testcontainers reads its settings from the environment when imported (tests import it late).
    for name in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED", "TESTCONTAINERS_CONNECTION_MODE"):
        os.environ[name] = engine.env()[name]
    try:
        TIMINGS.update(timings.steps)
        SIZES.update({tag: engine.image_size(tag) for tag in Images(engine).all()})
        if (cache := getattr(pytestconfig, "cache", None)) is not None:
            cache.set(DOCKER_SUMMARY, {"at": time.time(), "timings": TIMINGS, "sizes": SIZES})
        yield engine
    finally:
        leftovers = engine.docker("ps", "-aq", "--filter", "label=org.testcontainers=true", capture=True).stdout.split()
        for project in engine.docker("ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}',
                                     capture=True).stdout.split():
            if project.startswith(TEST_PROJECT_PREFIX):
                leftovers += engine.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
                                           capture=True).stdout.split()
        if leftovers:
            engine.docker("rm", "--force", "--volumes", *sorted(set(leftovers)), capture=True)
        engine.docker("network", "prune", "--force", "--filter", "label=org.testcontainers=true", capture=True)
        if started and not engine.containers():
            engine.stop()
        os.environ.pop("DOCKER_HOST", None)
