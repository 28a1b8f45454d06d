"""core/personal.py: sealing is AES-256-GCM bound to its event, deterministic for a retry, and opens
only with its booking's key; the import refuses personal data; a live stream's buffer forgets it."""

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core import personal
from core.events import Event
from core.money import Money
from service.ledger.append import NewEvent
from service.ledger.feedhub import FeedHub, FeedItem
from service.ledger.importer import parse_line
from service.ledger.personal import sealed

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


def test_a_kept_sealer_seals_as_the_spec_says_every_time() -> None:
    # The nonce is HMAC-SHA256(key, booking code "\n" event id "\n" plaintext)[:12], then AES-256-GCM
    # (core/personal.py's docstring), computed here from those words; a Sealer reused keeps no state.
    sealer = personal.Sealer(KEY)
    plaintext = msgspec.json.encode(TRAVELLER)
    associated = f"ABC123\n{EVENT}".encode()
    nonce = hmac.new(KEY, associated + b"\n" + plaintext, hashlib.sha256).digest()[:12]
    raw = nonce + AESGCM(KEY).encrypt(nonce, plaintext, associated)
    expected = "enc:v1:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    other = uuid.uuid4()
    assert [sealer.seal("ABC123", EVENT, TRAVELLER), sealer.seal("ABC123", other, TRAVELLER),
            sealer.seal("ABC123", EVENT, TRAVELLER)] == [expected, personal.seal(KEY, "ABC123", other, TRAVELLER),
                                                         expected]


def test_sealing_an_append_changes_only_its_personal_data() -> None:
    price = Money.parse("120.00", "EUR")
    when = datetime(2026, 12, 4, tzinfo=UTC)
    events = [NewEvent(EVENT, "BookingPriced", price, {"reason": "x", "personal": TRAVELLER}, when),
              NewEvent(uuid.uuid4(), "PriceChanged", price, {"reason": "y"})]
    first, second = sealed(personal.Sealer(KEY), "ABC123", events)
    assert first == NewEvent(EVENT, "BookingPriced", price,
                             {"reason": "x", "personal": personal.seal(KEY, "ABC123", EVENT, TRAVELLER)}, when)
    assert second is events[1] and events[0].data == {"reason": "x", "personal": TRAVELLER}


def test_readers_see_it_opened_or_erased_and_the_rest_unchanged() -> None:
    data = {"reason": "booked", "personal": personal.seal(KEY, "ABC123", EVENT, TRAVELLER)}
    assert personal.revealed(data, "ABC123", EVENT, KEY) == {"reason": "booked", "personal": TRAVELLER}
    assert personal.revealed(data, "ABC123", EVENT, None) == {"reason": "booked", "personal": "erased"}
    assert personal.erased(data) == {"reason": "booked", "personal": "erased"}
    assert personal.revealed({"reason": "x"}, "ABC123", EVENT, None) == {"reason": "x"}
    assert personal.revealed(None, "ABC123", EVENT, KEY) is None


def test_the_import_takes_no_personal_data_and_no_erasure_and_says_so_without_the_data() -> None:
    line = {"booking_code": "ABC123", "department": "hotel", "event_id": str(EVENT), "type": "Note"}
    with pytest.raises(ValueError, match="data.personal is not imported") as refused:
        parse_line(json.dumps({**line, "data": {"personal": TRAVELLER}}).encode())
    assert "Ada" not in str(refused.value)
    with pytest.raises(ValueError, match="appended by an erasure only"):
        parse_line(json.dumps({**line, "type": personal.ERASED_TYPE}).encode())
    assert parse_line(json.dumps({**line, "data": {"reason": "x"}}).encode()).data == {"reason": "x"}


def test_a_live_streams_buffer_forgets_an_erased_bookings_personal_data() -> None:
    hub = FeedHub(None, "", 1 << 20, msgspec.json.encode)  # type: ignore[arg-type]  # no pool: the ring alone
    events = [_event("ABC123", 1, {"personal": TRAVELLER, "reason": "booked"}), _event("XYZ9", 1, {"personal": {}}),
              _event("ABC123", 2, {"reason": "no personal data"})]
    for event in events:
        item = FeedItem(event.position, event, msgspec.json.encode(event))
        hub._ring.append(item)
        hub._ring_bytes += len(item.chunk)
    hub._forget("ABC123")
    assert [item.event.data for item in hub._ring] == [{"personal": "erased", "reason": "booked"}, {"personal": {}},
                                                       {"reason": "no personal data"}]
    assert b"Ada" not in b"".join(item.chunk for item in hub._ring)
    assert hub._ring_bytes == sum(len(item.chunk) for item in hub._ring)


def _event(code: str, version: int, data: dict) -> Event:
    return Event(event_id=uuid.uuid4(), booking_code=code, version=version, type="Note", price=None, data=data,
                 department="hotel", occurred_at=None, recorded_at=datetime.now(UTC), position=version * 1000)
