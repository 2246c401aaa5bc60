"""PostgreSQL stopped under real processes (gunicorn, Celery worker, beat on a private embedded
PostgreSQL): every API request answers 503 in JSON within the connect timeout, health answers 503;
when PostgreSQL returns, the API and the worker carry on by themselves, without restarts."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from recsys.run import BASE_DIR
from tests.integration.faults import PrivatePostgres, http, ok, poll, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REQUESTS = [
    ("GET", "/api/v1/users/u1/recommendations", None),
    ("GET", "/api/v1/items/i1/similar", None),
    ("GET", "/api/v1/items/i1", None),
    ("POST", "/api/v1/interactions", {"interactions": [{"user": "u1", "item": "i2", "type": "view"}]}),
    ("PUT", "/api/v1/items/i3", {"title": "three"}),
]


def manage(env: dict[str, str], *args: str) -> str:
    answer = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args], env=env, cwd=BASE_DIR, check=True, capture_output=True
    )
    return answer.stdout.decode().strip()


def test_postgres_outage_answers_503_json_quickly_and_recovers_without_restarts(live_env, tmp_path):
    postgres = PrivatePostgres(tmp_path / "pg")
    postgres.start()
    try:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "faults"')
        env = {
            **live_env,
            "DATABASE_URL": postgres.database_url("faults"),
            "RECSYS_DATA_DIR": str(tmp_path),
            "RECSYS_CONTENT_ENCODER": "fake",
        }
        manage(env, "migrate", "--no-input", "-v", "0")
        key = manage(env, "create_api_key", "--name", "outage", "--scopes", "read,write", "--quiet")
        port = env["PORT"]
        with serving(env, tmp_path / "serve.log") as processes:
            items = [{"id": f"i{n}", "title": f"telescope {n}", "text": "telescope"} for n in range(5)]
            ok(http(port, key, "POST", "/api/v1/items/batch", {"items": items}))
            for method, path, body in REQUESTS:
                assert http(port, key, method, path, body).status in {200, 201}, path

            processes.settle()
            # When PostgreSQL stops
            postgres.stop()
            replies = [http(port, key, method, path, body) for method, path, body in REQUESTS for _ in range(2)]
            health = http(port, key, "GET", "/api/v1/health")

            # Then every request is refused at once with the JSON error body
            for reply in replies:
                assert reply.status == 503, (reply.status, reply.body)
                assert reply.content_type.startswith("application/json"), reply.content_type
                assert reply.body["error"]["code"] == "service_unavailable", reply.body
                assert reply.seconds < 6, reply.seconds  # at most the 5 s connect timeout
            assert health.status == 503 and health.body["database"] == "down", health.body
            assert health.seconds < 6

            # When PostgreSQL returns
            postgres.start()
            recovered = poll(lambda: http(port, key, "GET", "/api/v1/health").status == 200, 20, "health 200")
            # Then the API answers again, and the worker runs tasks again (it encodes a new item)
            for method, path, body in REQUESTS:
                assert http(port, key, method, path, body).status in {200, 201}, path
            ok(http(port, key, "PUT", "/api/v1/items/late", {"title": "telescope late", "text": "telescope"}), 201)
            poll(
                lambda: (
                    http(port, key, "GET", "/api/v1/items/late/similar?space=content").body.get("strategy") == "content"
                ),
                30,
                "the worker to encode an item sent after the outage",
            )
            assert not processes.gone(), f"restarted or died: {processes.gone()}"
    finally:
        postgres.stop()
    slowest = max(reply.seconds for reply in replies)
    print(f"during the outage: slowest 503 {slowest:.2f} s; healthy {recovered:.1f} s after PostgreSQL returned")
