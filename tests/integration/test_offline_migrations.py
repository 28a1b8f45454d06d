"""The migrations rendered as one SQL script (offline) make the same schema as online migration."""

from __future__ import annotations

import re
import subprocess
import uuid

from devstack.harness import database_url as url_of
from devstack.postgres import LocalPostgres
from migrations.runner import head_revision, upgrade, upgrade_script
from tests.conftest import sql


def _psql(postgres: LocalPostgres, url: str, script: str) -> subprocess.CompletedProcess[str]:
    name = url.rsplit("/", 1)[1]
    return subprocess.run([str(postgres.bindir / "psql"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "ledger",
                           "-d", name, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                          input=script, capture_output=True, text=True, timeout=120)


def _schema(postgres: LocalPostgres, url: str) -> str:
    dumped = subprocess.run([str(postgres.bindir / "pg_dump"), "--schema-only", "-h", "127.0.0.1",
                             "-p", str(postgres.port), "-U", "ledger", url.rsplit("/", 1)[1]],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    # pg_dump's \restrict lines carry a random key per run; the floor on new positions (0007) is the
    # migrating transaction's id x 65536, which differs from one database to another by nature.
    dumped = re.sub(r'(\("position" >= )\d+', r"\1<migration xid x 65536>", dumped)
    return "\n".join(line for line in dumped.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def test_the_offline_script_applies_to_an_empty_database_and_equals_online_migration(
        postgres: LocalPostgres) -> None:
    suffix = uuid.uuid4().hex[:8]
    offline, online = url_of(postgres.url, f"offline_{suffix}"), url_of(postgres.url, f"online_{suffix}")
    for url in (offline, online):
        sql(postgres.url, f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')
    try:
        script = upgrade_script("head")
        assert script.count("BEGIN;") == 1 and "SET LOCAL ROLE ledger_owner;" in script
        applied = _psql(postgres, offline, script)
        assert applied.returncode == 0, applied.stderr
        upgrade(online)
        assert sql(offline, "SELECT version_num FROM alembic_version") == head_revision()
        assert _schema(postgres, offline) == _schema(postgres, online)
        assert "GRANT SELECT ON TABLE public.events TO ledger_relay" in _schema(postgres, offline)
    finally:
        for url in (offline, online):
            sql(postgres.url, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def test_a_range_renders_from_a_revision_on(postgres: LocalPostgres) -> None:
    """`upgrade 0006:head --sql`: what a change board reviews for a database at 0006."""
    name = f"range_{uuid.uuid4().hex[:8]}"
    sql(postgres.url, f'CREATE DATABASE "{name}"')
    url = url_of(postgres.url, name)
    try:
        upgrade(url, revision="0006")
        script = upgrade_script(f"0006:{head_revision()}")
        assert "CREATE TABLE bookings" not in script and "CREATE TABLE console_sessions" not in script  # after 0006
        applied = _psql(postgres, url, script)
        assert applied.returncode == 0, applied.stderr
        assert sql(url, "SELECT version_num FROM alembic_version") == head_revision()
    finally:
        sql(postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
