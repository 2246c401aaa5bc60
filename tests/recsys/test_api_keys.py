"""Key lookups are cached per process for RECSYS_API_KEY_CACHE_SECONDS: a revocation or a change of
scopes made elsewhere (another web process, SQL) takes effect within that time, one made in this
process at once."""

from __future__ import annotations

import pytest
from django.utils import timezone

from recsys import api_keys
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


def revoke_elsewhere(key: ApiKey) -> None:
    """As another web process (or SQL) would: this process's cache is not told."""
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())


def test_a_live_key_is_looked_up_once_per_cache_time(clock, five_seconds, django_assert_num_queries):
    key, raw = api_key_create(name="k", scopes=["read"])
    with django_assert_num_queries(1):
        assert api_key_authenticate(raw_key=raw) == key
        clock.now += 4.9
        assert api_key_authenticate(raw_key=raw) == key
    clock.now += 0.2
    with django_assert_num_queries(1):
        assert api_key_authenticate(raw_key=raw) == key


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_time_has_passed(clock, five_seconds):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    revoke_elsewhere(key)

    assert api_key_authenticate(raw_key=raw) == key  # within the stated 5 s
    clock.now += 5.01
    assert api_key_authenticate(raw_key=raw) is None


def test_a_key_revoked_in_this_process_is_refused_at_once(clock, five_seconds):
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    api_key_revoke(key=key)

    assert api_key_authenticate(raw_key=raw) is None


def test_without_a_cache_time_every_request_is_looked_up(clock, settings):
    settings.RECSYS_API_KEY_CACHE_SECONDS = 0
    key, raw = api_key_create(name="k", scopes=["read"])
    assert api_key_authenticate(raw_key=raw) == key

    revoke_elsewhere(key)

    assert api_key_authenticate(raw_key=raw) is None


def test_scopes_changed_elsewhere_apply_after_the_cache_time(clock, five_seconds, make_client):
    client = make_client("read", "write")
    assert client.get("/api/v1/items/x").status_code == 404

    ApiKey.objects.update(scopes=["write"])

    assert client.get("/api/v1/items/x").status_code == 404
    clock.now += 5.01
    assert client.get("/api/v1/items/x").status_code == 403


def test_unknown_keys_are_not_cached(clock, five_seconds, django_assert_num_queries):
    with django_assert_num_queries(2):
        assert api_key_authenticate(raw_key="rsk_not-a-key") is None
        assert api_key_authenticate(raw_key="rsk_not-a-key") is None
