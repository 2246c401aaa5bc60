"""API key issuing and lookup: keys are random, shown once, and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

from recsys.errors import ValidationFailed
from recsys.models import ApiKey
from recsys.rates import InvalidRate, parse_rate

KEY_PREFIX = "rsk_"
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
    """The live key matching ``raw_key``, or None. A key this process found live within the last
    ``RECSYS_API_KEY_CACHE_SECONDS`` is not looked up again, so a revocation (or a change of scopes
    or rate) made elsewhere takes effect within that time; in this process, at once."""
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 128:
        return None
    digest = hash_key(raw_key)
    key = _accepted.get(digest)
    if key is None:
        key = _lookup(digest)
        if key is not None:
            _accepted.put(digest, key, seconds=settings.RECSYS_API_KEY_CACHE_SECONDS)
    return key


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
    """Revoke ``key``: refused at once by this process, within RECSYS_API_KEY_CACHE_SECONDS by others."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key_cache_clear()


def api_key_cache_clear() -> None:
    """Forget the keys this process found live (after a key is revoked or edited here)."""
    _accepted.clear()


class _AcceptedKeys:
    """Live keys by hash, each until a deadline: the lookup was 16% of an uncached recommendation's
    web CPU and a round trip (bench/serve_profile.py). Only keys found live are kept, so guessing
    cannot fill it; past MAX_KEYS it starts over."""

    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> ApiKey | None:
        until, key = self._keys.get(digest, (0.0, None))
        return key if until > time.monotonic() else None

    def put(self, digest: str, key: ApiKey, *, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if len(self._keys) >= self.MAX_KEYS:
                self._keys.clear()
            self._keys[digest] = (time.monotonic() + seconds, key)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


_accepted = _AcceptedKeys()
