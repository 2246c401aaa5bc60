"""recsys.redis_store hands out every Redis client: one per process and purpose, each on its
database, failing within its timeout; no other module builds one."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis

from recsys import redis_store
from recsys.run import BASE_DIR


@pytest.fixture
def fresh_clients(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], redis.Redis]:
    clients: dict[tuple[str, str], redis.Redis] = {}
    monkeypatch.setattr(redis_store, "_clients", clients)
    return clients


def test_each_purpose_gets_one_client_per_process(fresh_clients):
    assert redis_store.client("cache") is redis_store.client("cache")
    assert redis_store.client("broker") is redis_store.client("broker")
    assert redis_store.client("cache") is not redis_store.client("broker")


def test_the_cache_and_the_queues_are_different_databases_of_one_server(fresh_clients, settings):
    cache, broker = redis_store.client("cache"), redis_store.client("broker")

    # REDIS_URL's database (0 unless it names one; each pytest-xdist worker's is 3 further on) and the next.
    assert broker.connection_pool.connection_kwargs["db"] == settings.REDIS_DB
    assert cache.connection_pool.connection_kwargs["db"] == settings.REDIS_DB + 1
    broker.set("redis-store-test", "queues", ex=5)
    assert broker.get("redis-store-test") == b"queues" and cache.get("redis-store-test") is None


def test_a_dead_redis_fails_within_the_timeout_without_retries(fresh_clients, settings):
    settings.REDIS_URL = "redis://10.255.255.1:6379/0"  # unroutable: the connect times out

    started = time.monotonic()
    with pytest.raises(redis.RedisError):
        redis_store.client("broker").ping()

    assert time.monotonic() - started < 3 * redis_store.TIMEOUT_SECONDS


def test_no_other_module_builds_a_redis_client():
    builders = re.compile(r"redis\.(Strict)?Redis\(|Redis\.from_url|redis\.from_url|ConnectionPool\(")
    # embedded.py probes its own server before Django is configured.
    allowed = {Path("recsys/redis_store.py"), Path("recsys/embedded.py")}
    offenders = [
        path.relative_to(BASE_DIR)
        for package in ("recsys", "embeddings", "api")
        for path in (BASE_DIR / package).rglob("*.py")
        if path.relative_to(BASE_DIR) not in allowed and builders.search(path.read_text())
    ]

    assert offenders == []
