"""A key revoked while several web workers hold it in their caches is refused by every one of them
from the next request on (real processes: `recsys.run serve` with three gunicorn workers, the key
revoked from this process)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.cache import cache

from recsys.api_keys import api_key_create, api_key_revoke
from tests.integration.faults import http, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_revoked_key_is_refused_by_every_web_worker_from_the_next_request(live_env, tmp_path, monkeypatch):
    # This process announces in the served processes' namespace (tests otherwise get one of their own).
    monkeypatch.setattr(cache, "key_prefix", settings.CACHES["default"]["KEY_PREFIX"])
    key, raw = api_key_create(name="k", scopes=["read"])
    env = dict(live_env, WEB_CONCURRENCY="3")
    with serving(env, tmp_path / "serve.log"):
        # A fresh connection per request: the workers take turns, and each caches the key.
        before = [http(env["PORT"], raw, "GET", "/api/v1/items/absent").status for _ in range(30)]

        api_key_revoke(key=key)  # committed (no transaction around it): announced to every worker

        after = [http(env["PORT"], raw, "GET", "/api/v1/items/absent").status for _ in range(20)]

    assert before == [404] * 30
    assert after == [401] * 20
