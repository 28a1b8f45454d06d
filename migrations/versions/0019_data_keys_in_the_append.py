"""Data keys in the append transaction: the API seals personal data with the key it holds and the
append function checks that key against the booking's, under the booking's lock.

Until now the API read or made a booking's key in a statement (and, for a new key, a commit) of its
own before every append carrying `data.personal`. ledger_append_batch takes one more per-append
array, p_keys: the key each append's personal data was sealed with. ledger_data_key says how it
stands with the booking's: a booking's first key is stored in the append's transaction; an append
to an erased booking is refused (personal_data_erased); one sealed with another key is refused
(data_key_stale) and the API reads the booking's key and seals again. So the API keeps the keys it
used (service/ledger/personal.py) and an append is one round trip again.

The writer's arguments change: it is dropped and made again (SECURITY DEFINER, a fixed search_path
and its grant said again); its new part runs as the owner only (0008: not executable by PUBLIC).
Callers that pass twelve arguments (ledger_append, an API of 0018 during a rolling upgrade) go on
working: p_keys defaults to NULL, and such an API makes its keys as before.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04
"""

from alembic import op

from migrations import function_sql

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

WRITER = "ledger_append_batch"
_ARGUMENTS = ("text[], text[], boolean[], integer[], integer[], uuid[], text[], numeric[], text[], jsonb[], "
              "timestamptz[], text[]")
KEY_CHECK = ("ledger_data_key", "text, bytea")


def _install_writer(version: str) -> None:
    op.execute(function_sql(WRITER, version))
    op.execute(f"ALTER FUNCTION {WRITER} SECURITY DEFINER SET search_path = public, pg_temp")
    op.execute(f"REVOKE EXECUTE ON FUNCTION {WRITER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {WRITER} TO ledger_api")


def upgrade() -> None:
    name, arguments = KEY_CHECK
    op.execute(function_sql(name, "0019"))
    op.execute(f"REVOKE EXECUTE ON FUNCTION {name}({arguments}) FROM PUBLIC")
    op.execute(f"DROP FUNCTION {WRITER}({_ARGUMENTS})")
    _install_writer("0019")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {WRITER}({_ARGUMENTS}, bytea[])")
    _install_writer("0016")
    name, arguments = KEY_CHECK
    op.execute(f"DROP FUNCTION {name}({arguments})")
