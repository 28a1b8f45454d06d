"""Bounded exponential backoff that logs when a dependency starts and stops failing, and the end of
a retry loop that shutdown interrupted."""

from __future__ import annotations

import logging


class Stopped(Exception):
    """Shutdown was requested while a write (to DynamoDB or Kafka) was still being retried; nothing
    was skipped: what was not written is read again by the next sink."""


class Backoff:
    """The delay doubles per failure up to `cap`; one log line when an outage starts, one when it ends."""

    def __init__(self, logger: logging.Logger, first: float = 0.2, cap: float = 5.0) -> None:
        self.log = logger
        self.first, self.cap = first, cap
        self.delay = first
        self.failing = False
        self.failures = 0

    def failed(self, message: str, *args: object) -> float:
        """Record a failure; returns the seconds to wait before the next attempt."""
        self.failures += 1
        if not self.failing:
            self.log.warning(message, *args)
            self.failing = True
        else:
            self.delay = min(self.cap, self.delay * 2)
            if self.failures % 20 == 0:
                self.log.warning("still failing after %d attempts: " + message, self.failures, *args)
        return self.delay

    def succeeded(self, message: str) -> None:
        if self.failing:
            self.log.info("%s (after %d failed attempts)", message, self.failures)
        self.failing = False
        self.failures = 0
        self.delay = self.first
