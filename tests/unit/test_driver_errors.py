"""The one taxonomy of driver errors (core.pg.is_transient) and how the API maps it."""

from __future__ import annotations

import asyncpg
import pytest

from core.pg import is_transient
from service.ledger.db import translate
from service.ledger.errors import InvalidData, StoreUnavailable


def postgres_error(sqlstate: str) -> asyncpg.PostgresError:
    error_class = asyncpg.PostgresError.get_message_class_for_sqlstate(sqlstate) or asyncpg.PostgresError
    error = error_class.new({"C": sqlstate, "M": "test"})
    return error


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(), ConnectionResetError(), TimeoutError(), asyncpg.InterfaceError("closed"),
    asyncpg.InternalClientError("cannot switch to state"),
    postgres_error("08006"), postgres_error("57P01"), postgres_error("53300"), postgres_error("25006"),
    postgres_error("40001"), postgres_error("40P01"),
])
def test_transient_errors(error: BaseException) -> None:
    assert is_transient(error)
    translated = translate(error)
    assert isinstance(translated, StoreUnavailable) and translated.transient


@pytest.mark.parametrize("error", [
    postgres_error("23505"), postgres_error("22P02"), postgres_error("42P01"), postgres_error("42501"),
    ValueError("not a driver error"),
])
def test_permanent_errors(error: BaseException) -> None:
    assert not is_transient(error)


def test_permanent_errors_keep_their_meaning() -> None:
    assert isinstance(translate(postgres_error("22P02")), InvalidData)
    missing = translate(postgres_error("42P01"))
    assert isinstance(missing, StoreUnavailable) and not missing.transient
