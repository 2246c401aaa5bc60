"""API key issuing and lookup: keys are random, shown once, and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from recsys import redis_store
from recsys.errors import ValidationFailed
from recsys.models import ApiKey
from recsys.rates import InvalidRate, parse_rate

logger = logging.getLogger(__name__)

KEY_PREFIX = "rsk_"
# The Redis channel announcing every committed change of a key (recsys.api_keys.Changes).
CHANGES = "api-keys:changed"
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
    while no change of a key has been announced since (``api_key_cache_invalidate``: revocations,
    edits, deletes through the app, in any process) and for at most ``RECSYS_API_KEY_CACHE_SECONDS``,
    so a revoked key is refused on its next request; a change made outside the app (SQL) applies
    within the cache time. While Redis is away every request is looked up."""
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 128:
        return None
    digest = hash_key(raw_key)
    epoch = changes.epoch() if settings.RECSYS_API_KEY_CACHE_SECONDS > 0 else None
    key = _accepted.get(digest, epoch=epoch) if epoch is not None else None
    if key is None:
        key = _lookup(digest)
        if key is not None and epoch is not None:
            _accepted.put(digest, key, epoch=epoch, seconds=settings.RECSYS_API_KEY_CACHE_SECONDS)
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
    """Revoke ``key``: every web process refuses it on its next request once this commits."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key_cache_invalidate()  # an update() sends no post_save


def api_key_cache_invalidate() -> None:
    """Keys changed (revoked, edited, deleted: ApiKey's post_save and post_delete call this): this
    process forgets the keys it cached now, and once the change commits every process is told.
    The epoch moves on too: a lookup made before the change by another thread of this process
    (a threaded server) is cached under the old epoch, so it can never be used again, even when the
    announcement is lost."""
    changes.bump()
    _accepted.clear()
    transaction.on_commit(changes.bump)  # and again: a thread may have read the key as it was meanwhile
    transaction.on_commit(_announce)


def _announce() -> None:
    try:
        redis_store.run(_publish)
    except redis_store.RedisUnavailable:
        logger.warning(
            "API keys changed while Redis was away: other web processes apply it within %.0f s",
            settings.RECSYS_API_KEY_CACHE_SECONDS,
        )


def _publish(client: Any) -> None:
    client.publish(changes_channel(client), b"")
    # Redis writes a message to its subscribers' sockets before it answers the publisher's next command:
    # once PING answers, every process has it (on another host, a network transit later) and polls it
    # at the start of its next request.
    client.ping()


def changes_channel(client: Any) -> str:
    """The channel announcing changes of keys; channels are not per Redis database, so it names its own."""
    return f"{redis_store.key(CHANGES)}:db{client.connection_pool.connection_kwargs.get('db', 0)}"


class Changes:
    """This process's subscription to the channel that announces every committed change of a key: a
    connection of its own, polled (no round trip) at the start of each request. ``epoch`` counts the
    announcements received; a key found live is used again only under the epoch it was found under.
    Any error drops the subscription (the cached keys with it: announcements may have been missed);
    the next request subscribes afresh, through redis_store's breaker."""

    def __init__(self) -> None:
        self._connection: Any = None
        self._pid = 0
        self._epoch = 0
        self._lock = threading.Lock()

    def epoch(self) -> int | None:
        """The current epoch, or None while this process cannot be told of changes (Redis away)."""
        with self._lock:
            try:
                if self._connection is None or self._pid != os.getpid():
                    redis_store.run(self._subscribe)
                while self._connection.can_read(timeout=0):
                    self._connection.read_response()
                    self._epoch += 1
                return self._epoch
            except (redis_store.RedisUnavailable, redis.RedisError, OSError):
                self._drop()
                return None

    def drop(self) -> None:
        with self._lock:
            self._drop()

    def bump(self) -> None:
        """A change this process made itself: keys cached under the epoch so far are not used again."""
        with self._lock:
            self._epoch += 1

    def _subscribe(self, client: Any) -> None:
        self._drop()
        pool = client.connection_pool
        connection = pool.connection_class(**_subscription_options(pool.connection_kwargs))
        try:
            connection.connect()
            connection.send_command("SUBSCRIBE", changes_channel(client))
            connection.read_response()  # subscribed: from here on every announcement reaches this process
        except BaseException:
            connection.disconnect()
            raise
        self._connection, self._pid = connection, os.getpid()
        self._epoch += 1  # keys cached before may have missed announcements

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._epoch += 1
        if connection is not None and self._pid == os.getpid():
            try:
                connection.disconnect()
            except (redis.RedisError, OSError):
                pass


def _subscription_options(options: dict[str, Any]) -> dict[str, Any]:
    """The pool's connection options for a subscription of its own: RESP2, whose messages are plain
    replies (RESP3 hands them to a push handler), and so without redis-py's maintenance
    notifications, which a TCP pool turns on and which refuse to run on a RESP2 parser ("only
    supported with hiredis and RESP3 parsers": raised at connect, it opened the breaker)."""
    from redis.maint_notifications import MaintNotificationsConfig

    kept = {k: v for k, v in options.items() if not k.startswith("maint_notifications")}
    return {**kept, "protocol": 2, "maint_notifications_config": MaintNotificationsConfig(enabled=False)}


changes = Changes()


def api_key_cache_clear() -> None:
    """Forget the keys this process found live, and its subscription (tests: each starts with none)."""
    _accepted.clear()
    changes.drop()


class _AcceptedKeys:
    """Live keys by hash, each with the epoch it was found under and a deadline: the lookup was
    16% of an uncached recommendation's web CPU and a round trip (bench/serve_profile.py). Only keys
    found live are kept, so guessing cannot fill it; past MAX_KEYS it starts over."""

    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._keys: dict[str, tuple[int, float, ApiKey]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str, *, epoch: int) -> ApiKey | None:
        found, until, key = self._keys.get(digest, (-1, 0.0, None))
        return key if found == epoch and until > time.monotonic() else None

    def put(self, digest: str, key: ApiKey, *, epoch: int, seconds: float) -> None:
        with self._lock:
            if len(self._keys) >= self.MAX_KEYS:
                self._keys.clear()
            self._keys[digest] = (epoch, time.monotonic() + seconds, key)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


_accepted = _AcceptedKeys()
