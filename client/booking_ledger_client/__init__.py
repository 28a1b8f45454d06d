"""booking_ledger_client: the departments' Python client of the booking ledger.

`LedgerClient` (blocking) and `AsyncLedgerClient` (asyncio) have the same methods: `create`,
`append`, `booking`, `events`, `feed`, `read_events`, `wait_for_read_store` and the webhook
subscriptions' (`create_subscription`, `subscriptions`, `subscription`, `delete_subscription`,
`resume_subscription`, `skip_subscription_event`); `verify_signature` checks a delivery. Retries are
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
    SubscriptionLimit,
    SubscriptionNotFound,
    SubscriptionNotPaused,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    VersionConflict,
    WebhookUrlRefused,
)
from booking_ledger_client.models import (
    AppendResult,
    Booking,
    BookingEvents,
    CreatedSubscription,
    Event,
    FeedPage,
    Money,
    NewEvent,
    ReadResult,
    Subscription,
)
from booking_ledger_client.webhooks import InvalidSignature, delivered_events, verify_signature

__all__ = [
    "AppendResult",
    "AsyncLedgerClient",
    "Booking",
    "BookingCodeTaken",
    "BookingEvents",
    "BookingNotFound",
    "CreatedSubscription",
    "Event",
    "EventIdConflict",
    "FeedPage",
    "Forbidden",
    "InvalidSignature",
    "LedgerClient",
    "LedgerError",
    "Money",
    "NewEvent",
    "NotOwner",
    "RateLimited",
    "ReadResult",
    "ReadStoreBehind",
    "Subscription",
    "SubscriptionLimit",
    "SubscriptionNotFound",
    "SubscriptionNotPaused",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "VersionConflict",
    "WebhookUrlRefused",
    "__version__",
    "delivered_events",
    "verify_signature",
]
