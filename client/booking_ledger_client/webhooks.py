"""For a department's receiver of the ledger's webhooks: check a delivery's signature, read its events.

A delivery is `POST` with a JSON array of events (in position order) and the headers
`Ledger-Subscription`, `Ledger-Delivery` (the same id when the same events are sent again) and
`Ledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. Delivery is at
least once: dedupe by `event_id`. Answer 2xx within the ledger's timeout to acknowledge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from booking_ledger_client.models import Event


class InvalidSignature(ValueError):
    """The Ledger-Signature header does not match the body and the secret, or is too old."""


def verify_signature(secret: str, header: str, body: bytes, *, tolerance: float = 300.0,
                     now: float | None = None) -> None:
    """Return when `header` (Ledger-Signature) signs `body` (the raw bytes received) with `secret`,
    at a time within `tolerance` seconds of `now` (a replayed old delivery is refused); raise
    InvalidSignature otherwise. Compares in constant time."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise InvalidSignature("the signature header carries no t=<unix seconds>") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise InvalidSignature(f"the signature's time is more than {tolerance:g} s away from now")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise InvalidSignature("no v1 signature matches the body and the secret")


def delivered_events(body: bytes) -> list[Event]:
    """The events of a delivery's body, in position order."""
    return [Event.from_json(item) for item in json.loads(body)]
