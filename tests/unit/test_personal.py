"""core/personal.py: sealing is AES-256-GCM bound to its event, deterministic for a retry, and opens
only with its booking's key."""

import uuid

import pytest

from core import personal

KEY = bytes(range(32))
EVENT = uuid.UUID("3f0c6b1e-8a3c-4c7e-9f2a-1b2c3d4e5f60")
TRAVELLER = {"name": "Ada Example", "passport": "X1234567"}


def test_sealed_personal_data_opens_only_for_its_booking_event_and_key() -> None:
    sealed = personal.seal(KEY, "ABC123", EVENT, TRAVELLER)
    assert sealed.startswith("enc:v1:") and "Ada" not in sealed
    assert personal.open_sealed(KEY, "ABC123", EVENT, sealed) == TRAVELLER
    for code, event, key in (("ABC124", EVENT, KEY), ("ABC123", uuid.uuid4(), KEY), ("ABC123", EVENT, bytes(32))):
        with pytest.raises(ValueError):
            personal.open_sealed(key, code, event, sealed)


def test_sealing_is_deterministic_per_event_and_plaintext() -> None:
    sealed = personal.seal(KEY, "ABC123", EVENT, TRAVELLER)
    assert personal.seal(KEY, "ABC123", EVENT, TRAVELLER) == sealed  # a retry stays a retry
    assert personal.seal(KEY, "ABC123", EVENT, {**TRAVELLER, "name": "Bob"}) != sealed
    assert personal.seal(KEY, "ABC123", uuid.uuid4(), TRAVELLER)[:23] != sealed[:23]  # another nonce


def test_readers_see_it_opened_or_erased_and_the_rest_unchanged() -> None:
    data = {"reason": "booked", "personal": personal.seal(KEY, "ABC123", EVENT, TRAVELLER)}
    assert personal.revealed(data, "ABC123", EVENT, KEY) == {"reason": "booked", "personal": TRAVELLER}
    assert personal.revealed(data, "ABC123", EVENT, None) == {"reason": "booked", "personal": "erased"}
    assert personal.erased(data) == {"reason": "booked", "personal": "erased"}
    assert personal.revealed({"reason": "x"}, "ABC123", EVENT, None) == {"reason": "x"}
    assert personal.revealed(None, "ABC123", EVENT, KEY) is None
