"""API key issuing and lookup: keys are random, shown once, and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from recsys import redis_store
from recsys.errors import ValidationFailed
from recsys.models import ApiKey
from recsys.rates import InvalidRate, parse_rate

logger = logging.getLogger(__name__)

KEY_PREFIX = "rsk_"
# The keys' generation in Redis: a random token that every change of a key replaces once it commits.
GENERATION = "api-keys:generation"
# Every column, in the model's field order (what ApiKey.from_db takes).
_FIELDS = [f.attname for f in ApiKey._meta.concrete_fields]
_LOOKUP = f"SELECT {', '.join(_FIELDS)} FROM recsys_apikey WHERE key_hash = %s AND revoked_at IS NULL LIMIT 1"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, name: str, scopes: list[str], rate_limit: str = "") -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never stored or shown again."""
    unknown = sorted(set(scopes) - set(ApiKey.SCOPES))
    if unknown or not scopes:
        raise ValidationFailed(
            f"scopes must be a non-empty subset of {', '.join(ApiKey.SCOPES)}; got {', '.join(scopes) or 'none'}"
        )
    if not name.strip():
        raise ValidationFailed("an API key needs a name")
    rate_limit = rate_limit.strip()
    if rate_limit:
        try:  # checked once here, so that no request with this key can trip over it
            parse_rate(rate_limit)
        except InvalidRate as error:
            raise ValidationFailed(str(error), details={"rate_limit": ["invalid rate"]}) from None
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        name=name.strip(),
        prefix=raw_key[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(raw_key),
        scopes=sorted(set(scopes), key=ApiKey.SCOPES.index),
        rate_limit=rate_limit,
    )
    return key, raw_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The live key matching ``raw_key``, or None. A key this process found live is not looked up again
    while the keys' generation in Redis is the one it was found under (one GET per request instead of
    a PostgreSQL round trip) and for at most ``RECSYS_API_KEY_CACHE_SECONDS``. Every change of a key
    through the app renews the generation once it commits (``api_key_cache_invalidate``), so every
    process refuses a revoked key on its next request; a change made outside the app (SQL) applies
    within the cache time. While Redis is away every request is looked up."""
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 128:
        return None
    digest = hash_key(raw_key)
    generation = _generation() if settings.RECSYS_API_KEY_CACHE_SECONDS > 0 else None
    key = _accepted.get(digest, generation=generation) if generation is not None else None
    if key is None:
        key = _lookup(digest)
        if key is not None and generation is not None:
            _accepted.put(digest, key, generation=generation, seconds=settings.RECSYS_API_KEY_CACHE_SECONDS)
    return key


def _generation() -> bytes | None:
    """The keys' generation, read before any lookup it will tag (a change committed after the read
    renews it, so a key looked up meanwhile is looked up again next time); None while Redis is away."""
    try:
        return redis_store.run(_generation_read)  # type: ignore[no-any-return]
    except redis_store.RedisUnavailable:
        return None


def _generation_read(client: Any) -> bytes | None:
    name = redis_store.key(GENERATION)
    generation = client.get(name)
    if generation is None:  # a new or restarted Redis: a fresh token, under which no process cached a key
        client.set(name, secrets.token_hex(16), nx=True)
        generation = client.get(name)
    return generation  # type: ignore[no-any-return]


def _lookup(digest: str) -> ApiKey | None:
    # A plain cursor: a request whose key is not cached pays for this lookup. Through the ORM's compiler it cost
    # 0.73 ms against 0.27 ms for .raw() (500 lookups on the serving machine), and .raw()'s
    # RawQuerySet 0.34 ms against 0.22 ms for a cursor and from_db (bench/serve_profile.py).
    with connection.cursor() as cursor:
        cursor.execute(_LOOKUP, [digest])
        row = cursor.fetchone()
    key = ApiKey.from_db(connection.alias, _FIELDS, row) if row else None
    # The lookup is by hash (no timing signal about the key itself); compare in constant time anyway.
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key


def api_key_touch(*, key: ApiKey, every_seconds: int) -> None:
    """Record use at most once per ``every_seconds`` so that reads do not each cost a write."""
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() >= every_seconds:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def api_key_revoke(*, key: ApiKey) -> None:
    """Revoke ``key``: every web process refuses it on its next request once this commits."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key_cache_invalidate()  # an update() sends no post_save


def api_key_cache_invalidate() -> None:
    """Keys changed (revoked, edited, deleted: the post_save and post_delete of ApiKey call this): this
    process forgets the keys it cached now, and once the change commits a new generation in Redis
    makes every process look its keys up again."""
    api_key_cache_clear()
    transaction.on_commit(_generation_renew)


def _generation_renew() -> None:
    try:
        redis_store.run(lambda client: client.set(redis_store.key(GENERATION), secrets.token_hex(16)))
    except redis_store.RedisUnavailable:
        logger.warning(
            "API keys changed while Redis was away: other web processes apply it within %.0f s",
            settings.RECSYS_API_KEY_CACHE_SECONDS,
        )


def api_key_cache_clear() -> None:
    """Forget the keys this process found live (tests: each starts with none)."""
    _accepted.clear()


class _AcceptedKeys:
    """Live keys by hash, each with the generation it was found under and a deadline: the lookup was
    16% of an uncached recommendation's web CPU and a round trip (bench/serve_profile.py). Only keys
    found live are kept, so guessing cannot fill it; past MAX_KEYS it starts over."""

    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._keys: dict[str, tuple[bytes, float, ApiKey]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str, *, generation: bytes) -> ApiKey | None:
        found, until, key = self._keys.get(digest, (b"", 0.0, None))
        return key if found == generation and until > time.monotonic() else None

    def put(self, digest: str, key: ApiKey, *, generation: bytes, seconds: float) -> None:
        with self._lock:
            if len(self._keys) >= self.MAX_KEYS:
                self._keys.clear()
            self._keys[digest] = (generation, time.monotonic() + seconds, key)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


_accepted = _AcceptedKeys()
