"""Personal data, sealed per booking (crypto-shredding): an event's `data.personal` (an object) is
stored, sent to Kafka and copied to DynamoDB only as ciphertext under its booking's data key; the
keys live in their own table, which only the API's role may read. Erasing a booking destroys its
key: every copy of the ciphertext becomes noise at once, and every read shows `"personal": "erased"`.
The hash chain covers the ciphertext, so erasure changes no hash.

A sealed value is the string `enc:v1:` + base64url (no padding) of nonce (12 bytes) || AES-256-GCM
ciphertext and tag, over the compact JSON of the object, with the booking code and the event id as
associated data (a sealed value moved to another event does not open). The nonce is the first 12
bytes of HMAC-SHA256(key, associated data || plaintext): the same event sent again seals to the same
bytes (an idempotent retry stays a retry), and two different plaintexts never share a nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FIELD = "personal"
ERASED = "erased"
PREFIX = "enc:v1:"
ERASED_TYPE = "PersonalDataErased"  # the event an erasure appends; no client may append it
KEY_BYTES = 32
# Of these bookings, those whose personal data was erased (an erasure appends ERASED_TYPE after
# destroying the key): what a process that reads no key shows as erased (DynamoDB items, deliveries).
ERASED_BOOKINGS_SQL = f"""SELECT DISTINCT booking_code FROM events
    WHERE booking_code = ANY($1::text[]) AND type = '{ERASED_TYPE}'"""
_NONCE_BYTES = 12


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _associated(booking_code: str, event_id: UUID) -> bytes:
    return f"{booking_code}\n{event_id}".encode()


class Sealer:
    """One booking's data key, ready to seal with: its cipher and its nonce's HMAC are made once (an API
    process keeps one per booking it writes to: service/ledger/personal.py)."""

    __slots__ = ("_cipher", "_mac", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._cipher = AESGCM(key)
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def seal(self, booking_code: str, event_id: UUID, personal: dict[str, Any]) -> str:
        plaintext = msgspec.json.encode(personal)
        associated = _associated(booking_code, event_id)
        mac = self._mac.copy()
        mac.update(associated + b"\n" + plaintext)
        nonce = mac.digest()[:_NONCE_BYTES]
        sealed = nonce + self._cipher.encrypt(nonce, plaintext, associated)
        return PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def seal(key: bytes, booking_code: str, event_id: UUID, personal: dict[str, Any]) -> str:
    return Sealer(key).seal(booking_code, event_id, personal)


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def open_sealed(key: bytes, booking_code: str, event_id: UUID, value: str) -> dict[str, Any]:
    """The object sealed in `value`; ValueError when it does not open with this key for this event."""
    raw = value[len(PREFIX):]
    try:
        sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        plaintext = AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                                        _associated(booking_code, event_id))
    except (InvalidTag, ValueError) as error:
        raise ValueError("sealed personal data that does not open with its booking's key") from error
    opened = msgspec.json.decode(plaintext)
    if not isinstance(opened, dict):
        raise ValueError("sealed personal data that is not an object")
    return opened


def sealed_in(data: dict[str, Any] | None) -> str | None:
    """The sealed personal data in an event's data, if any."""
    if data is None:
        return None
    value = data.get(FIELD)
    return value if is_sealed(value) else None


def revealed(data: dict[str, Any] | None, booking_code: str, event_id: UUID,
             key: bytes | None) -> dict[str, Any] | None:
    """`data` as a reader sees it: personal data opened with `key`, or "erased" without one."""
    sealed = sealed_in(data)
    if sealed is None or data is None:
        return data
    if key is None:
        return {**data, FIELD: ERASED}
    try:
        return {**data, FIELD: open_sealed(key, booking_code, event_id, sealed)}
    except ValueError:
        return {**data, FIELD: ERASED}


def erased(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """`data` with its sealed personal data shown as erased (what DynamoDB keeps after an erasure)."""
    if sealed_in(data) is None or data is None:
        return data
    return {**data, FIELD: ERASED}
