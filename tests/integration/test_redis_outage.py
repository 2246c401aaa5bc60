"""Redis stopped under real processes (gunicorn, Celery worker, beat on a private redis-server):
ingestion stores every event, serving answers uncached, health says `redis: down`; when Redis
returns everything recovers without restarts and the beat sweeps pick up the work that could
not be queued (fold-ins of users, content encoding of items)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.db import connection

from embeddings.models import ModelVersion
from recsys.api_keys import api_key_create
from recsys.models import Interaction, Item
from tests.integration.conftest import free_port
from tests.integration.faults import PrivateRedis, http, ok, poll, serving, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPICS = ("telescope", "recipe")


def catalogue() -> list[dict[str, object]]:
    return [
        {"id": f"i{n}", "title": f"{TOPICS[n // 15]} {n}", "text": f"all about {TOPICS[n // 15]}, part {n}"}
        for n in range(30)
    ]


def communities() -> list[dict[str, object]]:
    """40 users in two taste communities over the 30 items, 6 events each (240 events)."""
    rng = np.random.default_rng(3)
    return [
        {"user": f"u{user}", "item": f"i{item}", "type": "purchase", "timestamp": "2026-01-01T00:00:00Z"}
        for user in range(40)
        for item in rng.choice(range(15) if user < 20 else range(15, 30), size=6, replace=False)
    ]


def vector_updated_after_events(table: str, user: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT v.updated_at > (SELECT max(x.created_at) FROM recsys_interaction x WHERE x.user_id = u.id) "
            f'FROM recsys_user u JOIN "{table}" v ON v.user_id = u.id WHERE u.external_id = %s',
            [user],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def test_redis_outage_loses_no_event_serves_uncached_and_recovers_without_restarts(live_env, tmp_path):
    redis = PrivateRedis(free_port(), tmp_path)
    redis.start()
    env = {
        **live_env,
        "REDIS_URL": redis.url,
        "RECSYS_DATA_DIR": str(tmp_path),
        "RECSYS_CONTENT_ENCODER": "fake",
        "RECSYS_CF_TUNE": "false",
        "RECSYS_FOLD_IN_SWEEP_SECONDS": "5",
        "RECSYS_CONTENT_SWEEP_SECONDS": "5",
    }
    port = env["PORT"]
    _, key = api_key_create(name="redis-outage", scopes=["read", "write", "admin"])
    try:
        with serving(env, tmp_path / "serve.log") as processes:
            # Given a trained collaborative model and a content version
            ok(http(port, key, "POST", "/api/v1/items/batch", {"items": catalogue()}))
            assert (
                ok(http(port, key, "POST", "/api/v1/interactions", {"interactions": communities()}))["created"] == 240
            )
            version = train(port, key)
            poll(
                lambda: (
                    http(port, key, "GET", "/api/v1/items/i0/similar?space=content").body.get("strategy") == "content"
                ),
                30,
                "a first content version",
            )

            processes.settle()
            # When Redis stops
            redis.stop()
            started = time.monotonic()
            health = http(port, key, "GET", "/api/v1/health")
            assert health.status == 200 and health.body["redis"] == "down", health.body
            assert health.seconds < 2, health.seconds
            moment = datetime.now(UTC) - timedelta(minutes=5)
            events = [
                {
                    "user": "u0",
                    "item": f"i{n}",
                    "type": "view",
                    "timestamp": (moment + timedelta(seconds=n)).isoformat(),
                }
                for n in (7, 8, 9)
            ] + [
                {"user": "newcomer", "item": f"i{n}", "type": "purchase", "timestamp": moment.isoformat()}
                for n in (1, 2, 3, 4)
            ]
            stored = ok(http(port, key, "POST", "/api/v1/interactions", {"interactions": events}))
            item = ok(
                http(
                    port, key, "PUT", "/api/v1/items/late-telescope", {"title": "telescope", "text": "about telescope"}
                ),
                201,
            )
            known = ok(http(port, key, "GET", "/api/v1/users/u0/recommendations?limit=5"))
            folded = ok(http(port, key, "GET", "/api/v1/users/newcomer/recommendations?limit=5"))
            similar = http(port, key, "GET", "/api/v1/items/i0/similar?limit=5")
            unencoded = http(port, key, "GET", "/api/v1/items/late-telescope/similar?space=content")
            outage_s = time.monotonic() - started

            # Then every event is stored and serving answers without the cache
            assert stored["created"] == 7 and not stored["errors"], stored
            assert Interaction.objects.count() == 247
            assert Interaction.objects.filter(user__external_id="newcomer").count() == 4
            assert Item.objects.filter(external_id="late-telescope", is_stub=False).exists() and item["id"]
            assert known["strategy"] == "collaborative" and known["model"]["version"] == version
            assert folded["strategy"] == "collaborative_fold_in" and folded["items"]
            assert similar.status == 200 and similar.body["items"]
            table = ModelVersion.objects.get(pk=version).user_table
            assert not vector_updated_after_events(table, "newcomer"), "nothing can fold in while Redis is down"
            assert unencoded.status != 200 or unencoded.body["strategy"] != "content", unencoded.body

            # When Redis returns on the same port
            redis.start()
            back = poll(lambda: http(port, key, "GET", "/api/v1/health").body.get("redis") == "ok", 10, "redis: ok")
            # Then the worker and beat reconnect and the sweeps do the work that could not be queued
            swept = poll(
                lambda: vector_updated_after_events(table, "newcomer") and vector_updated_after_events(table, "u0"),
                45,
                "the fold-in sweep to store fresh vectors of u0 and newcomer",
            )
            encoded = poll(
                lambda: (
                    http(port, key, "GET", "/api/v1/items/late-telescope/similar?space=content").body.get("strategy")
                    == "content"
                ),
                30,
                "the content sweep to encode the item changed while Redis was down",
            )
            assert ok(http(port, key, "GET", "/api/v1/users/newcomer/recommendations"))["strategy"] == "collaborative"
            assert not processes.gone(), f"restarted or died: {processes.gone()}"
    finally:
        redis.stop()
    print(
        f"outage checks {outage_s:.1f} s; health ok {back:.1f} s after restart; vectors swept after a further "
        f"{swept:.1f} s, the item encoded after {encoded:.1f} s more"
    )
