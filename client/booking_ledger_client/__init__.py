"""booking_ledger_client: the departments' Python client of the booking ledger.

`LedgerClient` (blocking) and `AsyncLedgerClient` (asyncio) have the same methods: `create`,
`append`, `booking`, `events`, `feed`, `read_events` and `wait_for_read_store`. Retries are
safe (event ids are made before the first try), errors are typed (`LedgerError` and its
subclasses, named after the API's problem codes), and `read_events(code, min_version=...)`
reads the DynamoDB read store when it has caught up, else the ledger.
"""

from booking_ledger_client.client import AsyncLedgerClient, LedgerClient, __version__
from booking_ledger_client.errors import (
    BookingCodeTaken,
    BookingNotFound,
    EventIdConflict,
    Forbidden,
    LedgerError,
    NotOwner,
    RateLimited,
    ReadStoreBehind,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    VersionConflict,
)
from booking_ledger_client.models import (
    AppendResult,
    Booking,
    BookingEvents,
    Event,
    FeedPage,
    Money,
    NewEvent,
    ReadResult,
)

__all__ = [
    "AppendResult",
    "AsyncLedgerClient",
    "Booking",
    "BookingCodeTaken",
    "BookingEvents",
    "BookingNotFound",
    "Event",
    "EventIdConflict",
    "FeedPage",
    "Forbidden",
    "LedgerClient",
    "LedgerError",
    "Money",
    "NewEvent",
    "NotOwner",
    "RateLimited",
    "ReadResult",
    "ReadStoreBehind",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "VersionConflict",
    "__version__",
]
