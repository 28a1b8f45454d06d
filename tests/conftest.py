"""Real servers for the suite: a private Postgres cluster on a free port, migrated by Alembic.

Nothing here touches the developer's `make run` data or the machine's own services.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core.settings import DatabaseSettings
from devstack.ha import HACluster
from devstack.harness import CLI, as_role, fetch_value, free_port
from devstack.postgres import LocalPostgres
from migrations.runner import upgrade
from service.ledger.db import create_pool
from tests import scratch

__all__ = ["free_port", "random_code", "sql"]

# `make test` runs the suite on two workers (pytest-xdist). Each test module stays on one worker, so its
# module fixtures start once; these folders stay whole because their session servers are machine-wide
# (the project's one Docker engine, the namespaces of tests/partitions) or heavy (a Patroni cluster, the
# soak's and the bench's stacks).
WHOLE_FOLDERS = {"docker", "ha", "soak", "bench", "partitions"}
ON_THE_HA_CLUSTER = {"e2e/test_console_browser.py"}  # outside tests/ha, its cluster's other user
# The longest groups go first, longest first, so that neither worker is left with a long one at the end
# (a quiet run of 2026-12-04: bench about 235 s, partitions 200, ha 200, Kafka faults 150, docker 110 once its
# images are built, soak 90). tests/docker comes after minutes of other tests: by then `make test` has built
# its images beside them (EarlyImages below; 150-200 s on a fresh clone).
LONGEST_FIRST = ["bench", "partitions", "ha", "integration/test_kafka_faults.py", "docker", "soak"]


def group_of(nodeid: str) -> str:
    """`tests/ha/test_x.py::test_y[z]` -> `ha`; `tests/unit/test_x.py::test_y` -> `unit/test_x.py`."""
    module = Path(nodeid.split("::", 1)[0])
    parts = module.parts[1:] if module.parts[0] == "tests" else module.parts
    if parts[0] in WHOLE_FOLDERS:
        return parts[0]
    module_path = Path(*parts).as_posix()
    return "ha" if module_path in ON_THE_HA_CLUSTER else module_path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ranks = {group: rank for rank, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: ranks.get(group_of(item.nodeid), len(ranks)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Hand out whole groups (above) to the workers, in the order collected."""
    from xdist.scheduler import LoadScopeScheduling

    # Left on, pytest-xdist hands out the groups with the most tests first, whatever their length: the
    # three tests of tests/partitions (the short campaign among them) came last and ran alone at the end.
    config.option.loadscopereorder = False

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


SESSION_START = pytest.StashKey[float]()
DOCKER_SUMMARY = "booking-ledger/docker-summary"  # in pytest's cache: tests/docker writes it, the summary reads it


class EarlyImages(threading.Thread):
    """The Docker engine started and the images built beside the first tests (`make test`): on a fresh
    clone the build takes minutes, mostly apt's downloads and unpacking, which would otherwise hold one
    of the two workers idle in tests/docker's fixture (it waits for this build, then finds it done)."""

    def __init__(self) -> None:
        super().__init__(name="docker-images", daemon=True)
        from devstack.docker import Engine

        self.engine = Engine()
        self.started_engine = False
        self.seconds: float | None = None
        self.steps: dict[str, float] = {}
        self.error: str | None = None

    def run(self) -> None:
        from devstack.docker import prepare

        began = time.monotonic()
        try:
            self.started_engine, timings = prepare(self.engine)
            self.steps = timings.steps
        except Exception as error:  # the fixture builds again and fails the container tests with it
            self.error = f"{type(error).__name__}: {error}"
        self.seconds = round(time.monotonic() - began, 1)

    def finish(self) -> None:
        """Wait for the build, and stop the engine when this build started it and no container is left."""
        self.join()
        if self.started_engine and self.engine.running() and not self.engine.containers():
            self.engine.stop()


EARLY_IMAGES = pytest.StashKey[EarlyImages]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--docker-images-early", action="store_true",
                     help="start the project's Docker engine and build its images beside the first tests")


SCRATCH = pytest.StashKey[scratch.Run]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SESSION_START] = time.time()
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller did the rest
        return
    config.stash[SCRATCH] = run = scratch.Run()  # the run's scratch folder, named to the workers
    run.begin()
    if config.getoption("--docker-images-early"):
        config.stash[EARLY_IMAGES] = early = EarlyImages()
        early.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if EARLY_IMAGES in session.config.stash:  # before the summary, which reports the build
        session.config.stash[EARLY_IMAGES].finish()
    if SCRATCH in session.config.stash:  # kept when the run failed, for a post-mortem
        passed = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        session.config.stash[SCRATCH].end(passed)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The Docker engine's start and the image builds, also when a pytest-xdist worker ran tests/docker."""
    early = config.stash.get(EARLY_IMAGES, None)
    if early is not None and early.seconds is not None:
        terminalreporter.section("docker: engine and image builds, beside the first tests")
        failed = f" (failed: {early.error})" if early.error else ""
        terminalreporter.write_line(f"{early.seconds:7.1f} s  in all{failed}")
        for step, seconds in early.steps.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {step}")
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    summary = cache.get(DOCKER_SUMMARY, None) if cache is not None else None
    if not summary or summary["at"] < config.stash[SESSION_START]:
        return
    terminalreporter.section("docker: engine and image builds")
    for step, seconds in summary["timings"].items():
        terminalreporter.write_line(f"{seconds:7.1f} s  {step}")
    for tag, size in summary["sizes"].items():
        terminalreporter.write_line(f"{size / 1e6:7.0f} MB {tag}")


def random_code(prefix: str = "T") -> str:
    """Tests isolate by random booking codes, never by wiping tables."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def sql(url: str, statement: str, *args: object) -> object:
    """Run one statement on a fresh connection, from synchronous code; returns its first value."""
    return fetch_value(url, statement, *args)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    base = scratch.folder("booking-ledger-test-")
    server = LocalPostgres(base / "pg", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(postgres: LocalPostgres) -> str:
    upgrade(postgres.url)
    return postgres.url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(DatabaseSettings(url=database_url, pool_size=50, command_timeout=30))
    try:
        yield pool
    finally:
        await pool.close()


HA_KEEP = bool(os.environ.get("LEDGER_HA_KEEP"))  # set it to keep the nodes' logs for a post-mortem


@pytest.fixture(scope="session")
def ha_root() -> Iterator[Path]:
    root = scratch.folder("ledger-ha-", keep=HA_KEEP)
    yield root
    if not HA_KEEP:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ha_cluster(ha_root: Path) -> Iterator[HACluster]:
    """etcd and three Patroni/Postgres nodes (devstack.ha), migrated through the multi-host URL: the
    failover tests' cluster (tests/ha), which the console's browser test shows too (one per session)."""
    if shutil.which("patroni") is None or shutil.which("etcd") is None:
        pytest.skip("Patroni and etcd are not installed (make install: scripts/system-deps.sh)")
    cluster = HACluster.on_free_ports(ha_root / "cluster")
    cluster.start()
    try:
        migrate = as_role({**os.environ, "LEDGER_DATABASE_URL": cluster.url}, "migrate")
        subprocess.run([CLI, "migrate"], env=migrate, check=True, capture_output=True, timeout=120)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_ambient_settings() -> None:
    for name in list(os.environ):
        if name.startswith("LEDGER_"):
            del os.environ[name]
