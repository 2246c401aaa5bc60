"""Every Redis client of the project, one per process and purpose, and a breaker for the cache.

Purposes: ``cache`` is the cache's database (CACHES: the one after REDIS_URL's); ``broker`` is
REDIS_URL's database, where Celery's queues and the fold-in bookkeeping live (database 0 of a
Unix-socket Redis whose URL names none). Both fail within half a second and never retry: Redis is
an accelerator here, never the source of truth, so callers catch the error (``RedisUnavailable``
through ``run``) and carry on without it. The breaker keeps a dead Redis from costing every request
a connect timeout. Celery's own connections (broker, results) are configured in settings, not here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Literal

import redis
from django.conf import settings
from django.core.cache import cache
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsys.redis_urls import redis_base_db, redis_db_url

logger = logging.getLogger(__name__)
BREAKER_SECONDS = 5.0  # after a failure, requests skip Redis this long before trying again


class RedisUnavailable(Exception):
    """Redis failed just now, or recently enough that the breaker is open."""


Purpose = Literal["cache", "broker"]
TIMEOUT_SECONDS = 0.5  # connect and socket timeouts of every client handed out here

_lock = threading.Lock()
_clients: dict[tuple[str, str], redis.Redis] = {}  # (purpose, url): settings overridden in tests change the url
_open_until = 0.0


def client(purpose: Purpose = "cache") -> redis.Redis:
    """The process's client for ``purpose`` (redis-py's pool reconnects after a fork or an outage)."""
    key = (purpose, _url(purpose))
    with _lock:
        if key not in _clients:
            _clients[key] = redis.Redis.from_url(key[1], **_options(purpose))
        return _clients[key]


def client_replace(purpose: Purpose, replacement: redis.Redis) -> None:
    """Hand out ``replacement`` for ``purpose`` from now on (tests: a client of a dead server)."""
    with _lock:
        _clients[(purpose, _url(purpose))] = replacement


def _url(purpose: Purpose) -> str:
    if purpose == "cache":
        return str(settings.CACHES["default"]["LOCATION"])
    url = str(settings.REDIS_URL)
    # Celery's queues are in the database REDIS_URL names (0 where a Unix socket's URL names none).
    return redis_db_url(url, redis_base_db(url))


def _options(purpose: Purpose) -> dict[str, Any]:
    cache_settings: dict[str, Any] = settings.CACHES["default"]
    options: dict[str, Any] = dict(cache_settings.get("OPTIONS", {})) if purpose == "cache" else {}
    # No retries: redis-py's default backoff would make a dead Redis cost each caller seconds.
    return {
        "socket_connect_timeout": TIMEOUT_SECONDS,
        "socket_timeout": TIMEOUT_SECONDS,
        **options,
        "retry": Retry(NoBackoff(), 0),
    }


def key(name: str) -> str:
    """``name`` in the cache's namespace (its KEY_PREFIX and version), as Django's cache spells keys."""
    return cache.make_key(name)


def keys(names: Iterable[str]) -> list[str]:
    """``key`` of each name, the cache looked up once (a batch's thousand owners)."""
    make_key = cache.make_key
    return [make_key(name) for name in names]


def run(operation: Any) -> Any:
    """``operation(client)`` against the cache database; raises RedisUnavailable instead of Redis errors."""
    global _open_until
    if time.monotonic() < _open_until:
        raise RedisUnavailable("redis skipped: it failed moments ago")
    try:
        return operation(client("cache"))
    except (redis.RedisError, OSError) as error:
        _open_until = time.monotonic() + BREAKER_SECONDS
        logger.warning("redis unavailable (%s); going on without it for %.0f s", error, BREAKER_SECONDS)
        raise RedisUnavailable(str(error)) from error


def breaker_reset() -> None:
    """Close the breaker (tests, and after a health check sees Redis back)."""
    global _open_until
    _open_until = 0.0
