"""The conformance scenario, on the client openapi-python-client makes from the API's OpenAPI document
(package ledger_api_client, generated beside this file in the test's workspace): create a booking, a
colliding create by another department, an append at a stale version, a read-back, the price as of a
moment. Settings come from the environment (tests/e2e/test_generated_clients.py); any difference from
the contract ends the run with an AssertionError."""

import os
from datetime import datetime

from ledger_api_client import AuthenticatedClient
from ledger_api_client.api.default import append_events, get_booking, get_price
from ledger_api_client.models import (
    AppendIn,
    AppendOut,
    Booking,
    Clock,
    Currency,
    EventIn,
    PriceIn,
    PriceInForce,
    Problem,
    ProblemCode,
)

url, code, owner = os.environ["LEDGER_URL"], os.environ["LEDGER_CODE"], os.environ["LEDGER_OWNER"]
hotel = AuthenticatedClient(base_url=url, token=os.environ["LEDGER_KEY"])
car = AuthenticatedClient(base_url=url, token=os.environ["LEDGER_OTHER_KEY"])

# Create the booking: expected_version 0; the key's department becomes its owner.
created = append_events.sync_detailed(code, client=hotel, body=AppendIn(expected_version=0, events=[
    EventIn(type_="BookingPriced", price=PriceIn(amount="120.00", currency=Currency.EUR),
            occurred_at=datetime.fromisoformat("2026-11-26T10:00:00+00:00"))]))
assert created.status_code == 201 and isinstance(created.parsed, AppendOut) and created.parsed.version == 1

# Another department's create of the same code: 409 booking_code_taken, naming the owner.
taken = append_events.sync_detailed(code, client=car, body=AppendIn(expected_version=0, events=[
    EventIn(type_="BookingPriced")]))
assert taken.status_code == 409 and isinstance(taken.parsed, Problem), taken
assert taken.parsed.code == ProblemCode.BOOKING_CODE_TAKEN and taken.parsed.department == owner

# Append at version 1, then again at the now stale version 1: 409 version_conflict.
changed = append_events.sync_detailed(code, client=hotel, body=AppendIn(expected_version=1, events=[
    EventIn(type_="PriceChanged", price=PriceIn(amount="99.50", currency=Currency.EUR),
            occurred_at=datetime.fromisoformat("2026-11-26T11:00:00+00:00"))]))
assert isinstance(changed.parsed, AppendOut) and changed.parsed.version == 2
stale = append_events.sync_detailed(code, client=hotel, body=AppendIn(expected_version=1, events=[
    EventIn(type_="PriceChanged")]))
assert stale.status_code == 409 and isinstance(stale.parsed, Problem), stale
assert stale.parsed.code == ProblemCode.VERSION_CONFLICT and stale.parsed.current_version == 2

# Read it back, with any department's read key.
booking = get_booking.sync(code, client=car)
assert isinstance(booking, Booking) and booking.version == 2 and booking.department == owner
assert booking.price is not None and booking.price.amount == "99.50"

# The price in force at 10:30 business time: the create's.
then = get_price.sync(code, client=car, at=datetime.fromisoformat("2026-11-26T10:30:00+00:00"), clock=Clock.OCCURRED)
assert isinstance(then, PriceInForce) and then.version == 1
assert then.price is not None and then.price.amount == "120.00"
print("python conformance: ok")
