"""What one API worker admits: a key's request rate, and its open event streams.

Both are counted per worker process: with N workers a key may get up to N times the rate, and
hold LEDGER_STREAM_MAX_PER_KEY streams in each worker.
"""

from __future__ import annotations

import math
import time

from core.settings import StreamSettings
from service.api import metrics
from service.api.problems import ApiError
from service.ledger.feedhub import FeedHub


class RateLimiter:
    """A token bucket per key: `rate` requests per second, bursts up to one second's worth.

    It lives in one worker process; with N workers a key may get up to N times the rate.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def retry_after(self, key_id: str) -> int | None:
        """Take a token for `key_id`; None when allowed, else whole seconds until a token is due."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return None
        self._buckets[key_id] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))


class StreamAdmission:
    """The open event streams of one API worker, capped per key and in all."""

    def __init__(self, settings: StreamSettings, hub: FeedHub) -> None:
        self.settings = settings
        self._hub = hub
        self.open: dict[str, int] = {}  # key id -> open streams

    def admit(self, key_id: str) -> None:
        """Count a new stream of `key_id`, or raise 429 when over a cap."""
        total = sum(self.open.values())
        if total >= self.settings.max_open:
            raise ApiError(429, "rate_limited", f"this API process serves {total} event streams, its most; "
                           "try again later", {"Retry-After": "5"})
        if self.open.get(key_id, 0) >= self.settings.max_per_key:
            raise ApiError(429, "rate_limited", f"this key has {self.settings.max_per_key} event streams open "
                           "here, its most; close one first", {"Retry-After": "5"})
        self.open[key_id] = self.open.get(key_id, 0) + 1
        metrics.STREAMS_OPEN.inc()
        self._hub.join()

    def release(self, key_id: str) -> None:
        self.open[key_id] -= 1
        if not self.open[key_id]:
            del self.open[key_id]
        metrics.STREAMS_OPEN.dec()
        self._hub.leave()
