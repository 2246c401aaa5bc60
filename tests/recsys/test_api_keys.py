"""Key lookups are cached per process until a change of a key is announced on Redis: a key revoked,
edited or deleted through the app (in any process) is looked up again on the next request once the
change commits; a change made outside the app (SQL) applies within RECSYS_API_KEY_CACHE_SECONDS; while
Redis is away every request is looked up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.utils import timezone

from recsys import api_keys, redis_store
from recsys.api_keys import api_key_authenticate, api_key_create, api_key_revoke
from recsys.models import ApiKey
from tests.factories import FakeClock

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(api_keys.time, "monotonic", clock)
    return clock


@pytest.fixture
def five_seconds(settings):
    settings.RECSYS_API_KEY_CACHE_SECONDS = 5


@contextmanager
def another_process() -> Iterator[None]:
    """Code run here has a key cache of its own, as another web process has: whatever it does to its
    cache leaves this process's alone; only Redis and the database are shared."""
    ours = api_keys._accepted
    api_keys._accepted = api_keys._AcceptedKeys()
    try:
        yield
    finally:
        api_keys._accepted = ours


def revoke_with_sql(key: ApiKey) -> None:
    """As an UPDATE outside the app would: nobody is told."""
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())


@contextmanager
def listening() -> Iterator[list[dict]]:
    """The announcements of key changes made meanwhile, as a subscriber of their channel receives them."""
    client = redis_store.client("cache")
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(api_keys.changes_channel(client))
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    heard: list[dict] = []
    try:
        yield heard
    finally:
        while (message := pubsub.get_message(timeout=0.2)) is not None:
            heard.append(message)
        pubsub.close()


def test_a_live_key_is_looked_up_once_per_cache_time_while_no_key_changes(
    clock, five_seconds, django_assert_num_queries
):
    key, raw = api_key_create(name="k", scopes=["read"])
    with django_assert_num_queries(1):
        assert api_key_authenticate(raw_key=raw) == key
        clock.now += 4.9
        assert api_key_authenticate(raw_key=raw) == key
    clock.now += 0.2
    with django_assert_num_queries(1):
        assert api_key_authenticate(raw_key=raw) == key


def test_a_key_revoked_in_another_process_is_refused_on_the_next_request(
    clock, five_seconds, django_capture_on_commit_callbacks
):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    with another_process(), django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=key)

    assert api_key_authenticate(raw_key=raw) is None


def test_other_processes_are_told_of_a_change_only_once_it_commits(five_seconds, django_capture_on_commit_callbacks):
    key, _ = api_key_create(name="k", scopes=["read"])

    with listening() as before_commit, django_capture_on_commit_callbacks() as on_commit:
        api_key_revoke(key=key)
    with listening() as after_commit:
        for callback in on_commit:
            callback()

    assert before_commit == []  # a process looking the key up before the commit still sees it live
    assert len(after_commit) == 1


def test_a_key_revoked_in_this_process_is_refused_at_once(clock, five_seconds):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    api_key_revoke(key=key)

    assert api_key_authenticate(raw_key=raw) is None


def test_scopes_changed_in_another_process_apply_on_the_next_request(
    clock, five_seconds, make_client, django_capture_on_commit_callbacks
):
    client = make_client("read", "write")
    assert client.get("/api/v1/items/x").status_code == 404

    with another_process(), django_capture_on_commit_callbacks(execute=True):
        key = ApiKey.objects.get()
        key.scopes = ["write"]
        key.save()  # as the admin's change form does

    assert client.get("/api/v1/items/x").status_code == 403


def test_a_key_deleted_in_another_process_is_refused_on_the_next_request(
    clock, five_seconds, django_capture_on_commit_callbacks
):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    with another_process(), django_capture_on_commit_callbacks(execute=True):
        ApiKey.objects.filter(pk=key.pk).delete()

    assert api_key_authenticate(raw_key=raw) is None


def test_a_new_key_leaves_the_keys_cached_elsewhere_cached(
    clock, five_seconds, django_capture_on_commit_callbacks, django_assert_num_queries
):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    with another_process(), django_capture_on_commit_callbacks(execute=True):
        api_key_create(name="other", scopes=["read"])

    with django_assert_num_queries(0):
        assert api_key_authenticate(raw_key=raw) == key


def test_a_key_revoked_with_sql_is_refused_once_the_cache_time_has_passed(clock, five_seconds):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    revoke_with_sql(key)

    assert api_key_authenticate(raw_key=raw) == key  # nobody renewed the generation: within the stated 5 s
    clock.now += 5.01
    assert api_key_authenticate(raw_key=raw) is None


def test_keys_cached_before_the_subscription_broke_are_looked_up_again(clock, five_seconds):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key
    revoke_with_sql(key)  # as if its announcement had been lost

    # As a restarted Redis would: the server closes this process's subscription (only this one: a
    # CLIENT KILL of every subscriber broke other test processes' subscriptions on the shared Redis)
    api_keys.changes._connection._sock.shutdown(socket.SHUT_RDWR)

    assert api_key_authenticate(raw_key=raw) is None


def test_while_redis_is_away_every_request_is_looked_up(clock, five_seconds, redis_down, django_assert_num_queries):
    key, raw = api_key_create(name="k", scopes=["read"])
    with django_assert_num_queries(2):
        assert api_key_authenticate(raw_key=raw) == key
        assert api_key_authenticate(raw_key=raw) == key

    revoke_with_sql(key)

    assert api_key_authenticate(raw_key=raw) is None


def test_without_a_cache_time_every_request_is_looked_up(clock, settings):
    settings.RECSYS_API_KEY_CACHE_SECONDS = 0
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    revoke_with_sql(key)

    assert api_key_authenticate(raw_key=raw) is None


def test_unknown_keys_are_not_cached(clock, five_seconds, django_assert_num_queries):
    with django_assert_num_queries(2):
        assert api_key_authenticate(raw_key="rsk_not-a-key") is None
        assert api_key_authenticate(raw_key="rsk_not-a-key") is None


@pytest.mark.parametrize("protocol", [None, 2, 3])
def test_the_subscription_connection_can_be_made_for_a_tcp_redis(protocol) -> None:
    # A TCP pool turns on redis-py's maintenance notifications, which refuse a RESP2 connection when
    # it is made: every subscription failed against a TCP Redis (CI's second pass) and opened the
    # breaker, so the cache, throttles and limits ran as if Redis were away. No server is needed:
    # the refusal came from building the connection.
    import redis

    client = redis.Redis(host="127.0.0.1", port=1, **({"protocol": protocol} if protocol else {}))
    pool = client.connection_pool

    connection = pool.connection_class(**api_keys._subscription_options(pool.connection_kwargs))

    assert connection.protocol in (2, "2")


def test_a_lookup_from_before_a_change_here_is_never_used_after_it(clock, five_seconds):
    # Given another thread of this process that looked the key up before it was revoked here, and
    # cached it after (a threaded server); the announcement never comes (the test transaction never commits)
    key, raw = api_key_create(name="k", scopes=["read"])
    epoch = api_keys.changes.epoch()
    api_key_revoke(key=key)
    api_keys._accepted.put(api_keys.hash_key(raw), key, epoch=epoch, seconds=5)

    # Then the revoked key is refused: the change here moved the epoch on
    assert api_key_authenticate(raw_key=raw) is None


def test_a_lookup_made_while_a_change_here_commits_is_not_used_after_it(
    clock, five_seconds, django_capture_on_commit_callbacks
):
    # Given a revocation whose transaction has not committed yet, and another thread of this process
    # that reads the key meanwhile (still live to it) and caches it under the epoch of that moment
    key, raw = api_key_create(name="k", scopes=["read"])
    with django_capture_on_commit_callbacks() as on_commit:
        api_key_revoke(key=key)
    api_keys._accepted.put(api_keys.hash_key(raw), key, epoch=api_keys.changes.epoch(), seconds=5)

    # When it commits (its announcement lost: only the callbacks of this process run)
    for callback in on_commit:
        if callback is not api_keys._announce:
            callback()

    # Then the key is looked up again, and refused
    assert api_key_authenticate(raw_key=raw) is None
