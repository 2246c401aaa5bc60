"""Shared fixtures: API clients holding keys of given scopes, and a per-run cache namespace.

Tests of pure modules carry ``pytestmark = pytest.mark.unit``: they need no service, so the
fixtures below that reset Redis state skip them, and ``make test-unit`` runs them alone with
nothing started (pytest-django refuses them the database).
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from rest_framework.test import APIClient

from recsys.api_keys import api_key_create
from recsys.services import interactions_ingest


@pytest.fixture(autouse=True)
def _isolated_cache_namespace() -> None:
    """Tests share the embedded Redis with a running demo and with each other: every test gets a
    key prefix of its own, so cached answers never leak from one test's database into another."""
    from django.core.cache import cache

    cache.key_prefix = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True, scope="session")
def _event_types_survive_flushes() -> None:
    """A transactional test ends with a flush, which empties the event types the migrations seeded;
    the flush's post_migrate puts them back, so a later test in the same process (xdist's worksteal
    mixes the two kinds) can still ingest a "purchase"."""
    from django.db.models.signals import post_migrate

    from recsys.migrations._event_type_defaults import event_types_seed

    clicks = importlib.import_module("recsys.migrations.0005_feedback_tables").CLICK_TYPES

    def seed(sender: object, using: str = "default", **kwargs: object) -> None:
        from recsys.models import EventType

        if getattr(sender, "name", None) == "recsys" and not EventType.objects.using(using).exists():
            event_types_seed(EventType, using)
            # as migration 0005 marks them after the seed: without it, a test that followed a
            # transactional one in the same process had no click type, so nothing was attributed
            EventType.objects.using(using).filter(name__in=clicks).update(counts_as_click=True)

    post_migrate.connect(seed, weak=False, dispatch_uid="tests-event-types-after-flush")


def _is_unit(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("unit") is not None


@pytest.fixture(autouse=True)
def _no_pending_fold_ins(request: pytest.FixtureRequest) -> None:
    """Fold-in bookkeeping lives in Redis, outside the test database: start each test clean."""
    if _is_unit(request):
        return
    from embeddings.freshness import fold_ins_pending_clear

    fold_ins_pending_clear()


@pytest.fixture(autouse=True)
def _no_cached_active_version() -> None:
    """Each web process caches the active version pointer; tests each have their own database."""
    from embeddings.selectors import active_version_serving_forget
    from experiments.selectors import experiments_running_forget

    active_version_serving_forget()
    experiments_running_forget()  # the running experiments, cached per process the same way


@pytest.fixture(autouse=True)
def _per_process_request_state_clear(request: pytest.FixtureRequest) -> None:
    """A web process remembers keys it found live, callers it refused lately (api.limits'
    penalty box), the rate-limit positions it claimed and, while Redis is away, the time its
    expensive requests took; tests share one process, so each starts with none of them."""
    if _is_unit(request):
        return
    from api.limits import local_budgets_clear, penalty_box
    from api.throttling import throttle_allowances_clear
    from recsys.api_keys import api_key_cache_clear

    penalty_box.clear()
    local_budgets_clear()
    api_key_cache_clear()
    throttle_allowances_clear()


@pytest.fixture(autouse=True)
def _redis_breaker_closed() -> Iterator[None]:
    from recsys import redis_store

    redis_store.breaker_reset()
    yield
    redis_store.breaker_reset()


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's Redis refuses connections (a real client pointed at a closed port)."""
    import redis

    from recsys import redis_store

    monkeypatch.setattr(redis_store, "_clients", {})
    redis_store.client_replace("cache", redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))


@pytest.fixture
def make_client(db: None) -> Callable[..., APIClient]:
    """``make_client("read", "write")`` → an APIClient authenticated with a fresh key of those scopes."""

    def make(*scopes: str, rate_limit: str = "") -> APIClient:
        _, raw_key = api_key_create(name=f"test-{'-'.join(scopes)}", scopes=list(scopes), rate_limit=rate_limit)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        client.raw_key = raw_key  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def reader(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("read")


@pytest.fixture
def writer(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("read", "write")


@pytest.fixture
def admin_client_api(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("read", "write", "admin")


@pytest.fixture
def communities(db: None) -> None:
    """40 users in two taste communities over 30 items, 6 interactions each."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(40):
        pool = range(15) if user < 20 else range(15, 30)
        for item in rng.choice(list(pool), size=6, replace=False):
            rows.append(
                {"user": f"u{user}", "item": f"i{item}", "type": "purchase", "timestamp": "2026-01-01T00:00:00Z"}
            )
    assert not interactions_ingest(rows=rows).errors
