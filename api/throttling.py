"""Rate limits: per key (a fixed-window counter in Redis that fails open when Redis is away), and
failed key attempts per client address (checked before the key lookup; counted in this process
while Redis is away)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from django.conf import settings
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from recsys import redis_store
from recsys.models import ApiKey
from recsys.rates import InvalidRate, Rate, parse_rate

logger = logging.getLogger(__name__)


class ApiKeyRateThrottle(BaseThrottle):
    """Counts requests per key per window; a window's count lives in one Redis key (INCRBY), which
    each process claims from in batches (``Allowances``)."""

    def allow_request(self, request: Request, view: Any) -> bool:
        self.wait_seconds: float | None = None
        key = request.auth
        if not isinstance(key, ApiKey):
            return True  # public endpoints; unauthenticated requests never reach a view
        limit, period = key_rate(key)
        now = time.time()
        window = int(now // period)
        counter = redis_store.key(f"throttle:{key.pk}:{period}:{window}")
        try:
            position = allowances.take(counter, limit=limit, period=period)
        except redis_store.RedisUnavailable:  # serving matters more than metering
            return True
        if position > limit:
            self.wait_seconds = (window + 1) * period - now
            return False
        return True

    def wait(self) -> float | None:
        return self.wait_seconds


def throttle_batch(limit: int) -> int:
    """How many of a window's requests a process claims from Redis at once: RECSYS_THROTTLE_BATCH,
    at most 1% of the limit (so 1 for small limits: every request counted in Redis, as before)."""
    return max(1, min(settings.RECSYS_THROTTLE_BATCH, limit // 100))


class Allowances:
    """This process's unused claims on each window's count. A claim is ``INCRBY batch``: the answer
    T makes positions T-batch+1 … T this process's own, so the processes together never let more
    than the limit through, and a process refuses on its own, without Redis, once its positions pass
    the limit (a window's count only grows). The cost: positions a process claimed but did not use
    by the window's end are lost, so a key at its limit may be refused up to (batch - 1) requests
    per process early. Saves each request but one per batch a Redis round trip (~0.3 ms of the web
    process's CPU on the loaded 2-core machine, bench/serve_profile.py)."""

    MAX_COUNTERS = 10_000  # keys × windows; past it they start over (a claim is then made again)

    def __init__(self) -> None:
        self._left: dict[str, tuple[int, int, int]] = {}  # counter: (next position, last claimed, pid)
        self._lock = threading.Lock()

    def take(self, counter: str, *, limit: int, period: int) -> int:
        """This request's position in the window's count (over ``limit``: refuse it)."""
        with self._lock:
            position, last, pid = self._left.get(counter, (1, 0, 0))
            if pid == os.getpid() and (position <= last or last > limit):
                self._left[counter] = (position + 1, last, pid)
                return position if position <= last else last + 1
        batch = throttle_batch(limit)
        last = redis_store.run(lambda client: _count(client, counter, period, batch))
        with self._lock:  # a forked process claims its own (pid)
            if len(self._left) >= self.MAX_COUNTERS:
                self._left.clear()
            self._left[counter] = (last - batch + 2, last, os.getpid())
        return last - batch + 1

    def clear(self) -> None:
        with self._lock:
            self._left.clear()


allowances = Allowances()


def throttle_allowances_clear() -> None:
    """Forget this process's claims (tests: each starts with none)."""
    allowances.clear()


def key_rate(key: ApiKey) -> Rate:
    """The key's own rate, else RECSYS_RATE_LIMIT. Both were checked when set (key creation, settings
    load); a row written around those checks gets the default rather than failing its requests."""
    try:
        return parse_rate(key.rate_limit or settings.RECSYS_RATE_LIMIT)
    except InvalidRate:
        logger.warning("API key %s has an invalid rate limit %r; using the default", key.prefix, key.rate_limit)
        return parse_rate(settings.RECSYS_RATE_LIMIT)


def _count(client: Any, counter: str, period: int, by: int = 1) -> int:
    """INCRBY and EXPIRE in one round trip; the key is the window's own, so re-arming it is harmless."""
    with client.pipeline(transaction=False) as pipe:
        pipe.incrby(counter, by)
        pipe.expire(counter, period + 1)
        count, _ = pipe.execute()
    return int(count)


# ---- failed key attempts per client address --------------------------------------------------


class TooManyFailedKeys(exceptions.Throttled):
    default_detail = "too many invalid API keys from this address"


def key_attempt_check(*, address: str) -> None:
    """Raises TooManyFailedKeys (429) while ``address`` is over RECSYS_AUTH_FAILURE_RATE, before any
    key is looked up: guessing keys then costs the database nothing."""
    rate = parse_rate(settings.RECSYS_AUTH_FAILURE_RATE)
    now = time.time()
    window = int(now // rate.seconds)
    counter = redis_store.key(f"authfail:{address}:{window}")
    try:
        failures = int(redis_store.run(lambda client: client.get(counter)) or 0)
    except redis_store.RedisUnavailable:
        failures = _local_failures.get(counter, 0)
    if failures >= rate.requests:
        raise TooManyFailedKeys(wait=max(1, (window + 1) * rate.seconds - now))


def key_attempt_failed(*, address: str) -> None:
    """Counts one failed attempt of ``address`` in the current window."""
    period = parse_rate(settings.RECSYS_AUTH_FAILURE_RATE).seconds
    counter = redis_store.key(f"authfail:{address}:{int(time.time() // period)}")
    try:
        redis_store.run(lambda client: _count(client, counter, period))
    except redis_store.RedisUnavailable:
        _local_failures.add(counter)


class _LocalCounts:
    """The fallback while Redis is away: per-process counts (so a limit per process), bounded in size."""

    MAX_KEYS = 10_000  # addresses × windows; past it the oldest counts go (an attacker's own included)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, counter: str, default: int) -> int:
        return self._counts.get(counter, default)

    def add(self, counter: str) -> None:
        with self._lock:
            if counter not in self._counts and len(self._counts) >= self.MAX_KEYS:
                del self._counts[next(iter(self._counts))]
            self._counts[counter] = self._counts.get(counter, 0) + 1


_local_failures = _LocalCounts()
