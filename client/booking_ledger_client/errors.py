"""The ledger's refusals as exceptions, one per problem code, each carrying the problem+json body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LedgerError(Exception):
    """Any error answer of the ledger (or a failure to reach it within `retry_seconds`).

    `problem` is the RFC 9457 body as received (`type`, `title`, `status`, `detail`, `code`, and
    extras such as `department`); `status` is the HTTP status (None when no answer came).
    Codes this library does not know map to this class itself.
    """

    def __init__(self, problem: Mapping[str, Any], status: int | None = None) -> None:
        self.problem: dict[str, Any] = dict(problem)
        self.status = status
        super().__init__(f"{self.code}: {self.detail}" if self.detail else self.code)

    @property
    def code(self) -> str:
        """The problem's stable snake_case code."""
        return str(self.problem.get("code") or "unknown")

    @property
    def detail(self) -> str:
        """The problem's human-readable detail."""
        return str(self.problem.get("detail") or "")


class BookingCodeTaken(LedgerError):
    """409 `booking_code_taken`: a create of a code that exists; `department` owns it."""

    @property
    def department(self) -> str | None:
        """The department that owns the code."""
        value = self.problem.get("department")
        return str(value) if value is not None else None


class VersionConflict(LedgerError):
    """409 `version_conflict`: the booking is not at `expected_version`; it is at `current_version`."""

    @property
    def current_version(self) -> int | None:
        """The booking's version when the append was refused."""
        value = self.problem.get("current_version")
        return int(value) if value is not None else None


class NotOwner(LedgerError):
    """403 `not_owner`: a `write` key appending to a booking another `department` owns."""

    @property
    def department(self) -> str | None:
        """The department that owns the booking."""
        value = self.problem.get("department")
        return str(value) if value is not None else None


class BookingNotFound(LedgerError):
    """404 `booking_not_found`: no booking with this code."""


class EventIdConflict(LedgerError):
    """409 `event_id_conflict`: an event_id is recorded with other content or for another booking."""

    @property
    def event_ids(self) -> list[str]:
        """The event ids already recorded."""
        return [str(i) for i in self.problem.get("event_ids") or []]


class Unauthorized(LedgerError):
    """401 `unauthorized`: no, malformed, unknown or revoked API key."""


class Forbidden(LedgerError):
    """403 `forbidden`: the key lacks the scope the route needs."""


class ValidationFailed(LedgerError):
    """422 `validation_error`: the request breaks the contract's input rules (`detail` says where)."""


class RateLimited(LedgerError):
    """429 `rate_limited`, still so when `retry_seconds` ran out; `retry_after` is the server's hint."""

    retry_after: float | None = None


class Unavailable(LedgerError):
    """503 `unavailable` or `unknown_outcome`, a connection error or a timeout, still so when
    `retry_seconds` ran out.

    After a connection error or timeout the request may or may not have been stored: send it
    again with the same event ids (the ledger answers a replay with the original events)."""

    retry_after: float | None = None


class ReadStoreBehind(LedgerError):
    """`wait_for_read_store` timed out: DynamoDB holds the booking only up to `latest_version`."""

    @property
    def latest_version(self) -> int:
        """The last version of the booking DynamoDB holds without a gap (0: none)."""
        return int(self.problem.get("latest_version") or 0)


class SubscriptionNotFound(LedgerError):
    """404 `subscription_not_found`: no subscription with this id for the key's department."""


class SubscriptionNotPaused(LedgerError):
    """409 `subscription_not_paused`: resume and skip act on a paused subscription only."""


class SubscriptionLimit(LedgerError):
    """409 `subscription_limit`: the department holds as many subscriptions as it may."""


class WebhookUrlRefused(LedgerError):
    """422 `webhook_url_refused`: the receiver URL breaks the safety rules (`detail` says which)."""


ERRORS_BY_CODE: dict[str, type[LedgerError]] = {
    "booking_code_taken": BookingCodeTaken,
    "version_conflict": VersionConflict,
    "not_owner": NotOwner,
    "booking_not_found": BookingNotFound,
    "event_id_conflict": EventIdConflict,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "validation_error": ValidationFailed,
    "rate_limited": RateLimited,
    "unavailable": Unavailable,
    "unknown_outcome": Unavailable,  # the server's word that the request may have been stored
    "subscription_not_found": SubscriptionNotFound,
    "subscription_not_paused": SubscriptionNotPaused,
    "subscription_limit": SubscriptionLimit,
    "webhook_url_refused": WebhookUrlRefused,
}
