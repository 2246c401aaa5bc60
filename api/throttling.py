"""Per-key rate limits: a fixed-window counter in Redis that fails open when Redis is away."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from recsys import redis_store
from recsys.models import ApiKey

_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}


def parse_rate(rate: str) -> tuple[int, int]:
    """``'600/min'`` → (600, 60)."""
    count, _, period = rate.partition("/")
    try:
        return int(count), _PERIODS[period.strip().lower()]
    except (ValueError, KeyError):
        raise ImproperlyConfigured(f"rate limit must look like '600/min', got {rate!r}") from None


class ApiKeyRateThrottle(BaseThrottle):
    """Counts requests per key per window; a window's count lives in one Redis key (INCR)."""

    def allow_request(self, request: Request, view: Any) -> bool:
        self.wait_seconds: float | None = None
        key = request.auth
        if not isinstance(key, ApiKey):
            return True  # public endpoints; unauthenticated requests never reach a view
        limit, period = parse_rate(key.rate_limit or settings.RECSYS_RATE_LIMIT)
        now = time.time()
        window = int(now // period)
        counter = redis_store.key(f"throttle:{key.pk}:{period}:{window}")
        try:
            count = redis_store.run(lambda client: _count(client, counter, period))
        except redis_store.RedisUnavailable:  # serving matters more than metering
            return True
        if count > limit:
            self.wait_seconds = (window + 1) * period - now
            return False
        return True

    def wait(self) -> float | None:
        return self.wait_seconds


def _count(client: Any, counter: str, period: int) -> int:
    """INCR and EXPIRE in one round trip; the key is the window's own, so re-arming it is harmless."""
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(counter)
        pipe.expire(counter, period + 1)
        count, _ = pipe.execute()
    return int(count)
