"""One Redis client per process for the cache database, behind a breaker that skips Redis briefly after a failure.

Redis is an accelerator here, never the source of truth: callers catch ``RedisUnavailable`` and
carry on without it. The breaker keeps a dead Redis from costing every request a connect timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)
BREAKER_SECONDS = 5.0  # after a failure, requests skip Redis this long before trying again


class RedisUnavailable(Exception):
    """Redis failed just now, or recently enough that the breaker is open."""


_lock = threading.Lock()
_client: redis.Redis | None = None
_open_until = 0.0


def _cache_client() -> redis.Redis:
    global _client
    with _lock:
        if _client is None:
            cache_settings: dict[str, Any] = settings.CACHES["default"]
            _client = redis.Redis.from_url(str(cache_settings["LOCATION"]), **cache_settings.get("OPTIONS", {}))
        return _client


def key(name: str) -> str:
    """``name`` in the cache's namespace (its KEY_PREFIX and version), as Django's cache spells keys."""
    return cache.make_key(name)


def run(operation: Any) -> Any:
    """``operation(client)`` against the cache database; raises RedisUnavailable instead of Redis errors."""
    global _open_until
    if time.monotonic() < _open_until:
        raise RedisUnavailable("redis skipped: it failed moments ago")
    try:
        return operation(_cache_client())
    except (redis.RedisError, OSError) as error:
        _open_until = time.monotonic() + BREAKER_SECONDS
        logger.warning("redis unavailable (%s); going on without it for %.0f s", error, BREAKER_SECONDS)
        raise RedisUnavailable(str(error)) from error


def breaker_reset() -> None:
    """Close the breaker (tests, and after a health check sees Redis back)."""
    global _open_until
    _open_until = 0.0
