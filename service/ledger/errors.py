"""What the ledger can refuse, in the contract's words. The API maps each to an HTTP answer."""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """A refusal with a stable snake_case code; `context` holds the fields the answer carries."""

    code = "ledger_error"

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context = context


class BookingCodeTaken(LedgerError):
    code = "booking_code_taken"


class VersionConflict(LedgerError):
    code = "version_conflict"


class BookingNotFound(LedgerError):
    code = "booking_not_found"


class NotOwner(LedgerError):
    code = "not_owner"


class EventIdConflict(LedgerError):
    code = "event_id_conflict"


class PersonalDataErased(LedgerError):
    """Personal data sent for a booking whose personal data was erased (its key is gone)."""

    code = "personal_data_erased"


class DataKeyStale(Exception):
    """An append sealed with a data key that is not its booking's (another API process stored the
    booking's first key meanwhile): the API reads the booking's key and seals again. Never an answer."""

    code = "data_key_stale"
    words = "the append was sealed with a data key that is not its booking's"


class SubscriptionNotFound(LedgerError):
    code = "subscription_not_found"


class SubscriptionNotPaused(LedgerError):
    code = "subscription_not_paused"


class SubscriptionLimit(LedgerError):
    code = "subscription_limit"


class WebhookUrlRefused(LedgerError):
    """A receiver URL that breaks the safety rules (core/webhooks.py)."""

    code = "webhook_url_refused"


class InvalidData(LedgerError):
    """Input the API's validation let through but Postgres cannot store (e.g. \\u0000 in JSON)."""

    code = "validation_error"


# The append function's refusals: the outcome it answers (the error's `code`) -> the error and its words.
REFUSALS: dict[str, tuple[type[LedgerError], str]] = {
    BookingCodeTaken.code: (BookingCodeTaken, "booking code is taken"),
    VersionConflict.code: (VersionConflict, "booking is not at the expected version"),
    BookingNotFound.code: (BookingNotFound, "no booking with this code"),
    NotOwner.code: (NotOwner, "booking belongs to another department"),
    EventIdConflict.code: (EventIdConflict,
                           "an event_id is already recorded with other content or for another booking"),
    PersonalDataErased.code: (PersonalDataErased,
                              "this booking's personal data was erased: no more is taken for it"),
}


class StoreUnavailable(LedgerError):
    """Postgres cannot be reached or did not answer in time; the request may be retried.

    `transient`: the cause passes by itself (a broken, refused, frozen or read-only connection,
    as during a failover), so the API retries the operation itself within its budget. A missing
    schema, or too many requests already waiting, is not transient: retrying inside would not help.
    """

    code = "unavailable"

    def __init__(self, detail: str, *, transient: bool = True, **context: Any) -> None:
        super().__init__(detail, **context)
        self.transient = transient


class OutcomeUnknown(StoreUnavailable):
    """The answer did not come in time, and a try may have stored the events (its commit was sent,
    then the connection broke or the wait ran out). Sending the same request again, with the same
    event ids, tells: the ledger answers a replay with the stored events, else stores them once."""

    code = "unknown_outcome"
