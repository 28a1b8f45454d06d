"""JSON read strictly, as the API reads a request body and the import reads a line.

msgspec decodes with no type coercion and no unknown fields (the structs say so). It keeps the
last of duplicate keys, like most decoders; a gateway or log reader may keep the first, so a
document in which one object names a key twice means two things, and is refused.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


def decode_strict(raw: bytes, type_: type[T], what: str) -> T:
    """`raw` as a `type_`. Raises msgspec.DecodeError (not JSON, not UTF-8, nested too deeply) or its
    subclass msgspec.ValidationError (not a `type_`, a key twice in one object); `what` names the
    document in the error (e.g. "body")."""
    try:
        value = msgspec.json.decode(raw, type=type_, strict=True)
        json.loads(raw, object_pairs_hook=_refuse_duplicates, parse_int=_skip, parse_float=_skip,
                   parse_constant=_skip)
        return value
    except UnicodeDecodeError as error:
        raise msgspec.DecodeError(f"{what} is not UTF-8: {error.reason} at byte {error.start}") from None
    except RecursionError:
        raise msgspec.DecodeError(f"{what} is nested too deeply") from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise msgspec.ValidationError(f"the key {duplicate!r} appears more than once in one JSON object")


def _skip(_: str) -> None:
    """Numbers are msgspec's to read; the duplicate-key pass only looks at keys."""
