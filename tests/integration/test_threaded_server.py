"""The threaded web worker (GUNICORN_WORKER=threads) under concurrent kept-alive clients: every request
gets its own user's answer, and one request's failure or limit never reaches another's (real
gunicorn, four threads in one process)."""

from __future__ import annotations

import http.client
import json
import random
import threading

import pytest

from embeddings import services
from embeddings.learners import LearnerParams
from recsys.api_keys import api_key_create
from tests.integration.faults import gunicorn_web

pytestmark = [pytest.mark.integration, pytest.mark.slow]
USERS = [f"u{n}" for n in range(40)]


def answer(connection: http.client.HTTPConnection, key: str, user: str) -> tuple[int, list[str]]:
    connection.request("GET", f"/api/v1/users/{user}/recommendations?limit=5", headers={"Authorization": key})
    reply = connection.getresponse()
    body = json.loads(reply.read())
    return reply.status, [item["id"] for item in body.get("items", [])]


def test_concurrent_kept_alive_clients_each_get_their_own_users_answer(live_env, tmp_path, communities, settings):
    # Given a trained model, and a server of one process with four threads, its answers uncached
    settings.RECSYS_CF_TUNE = False
    params = LearnerParams(algorithm="als", factors=8, iterations=10, regularization=0.05)
    services.collaborative_model_train(version_id=services.collaborative_version_create(params=params).pk)
    _, raw = api_key_create(name="threads", scopes=["read"])
    key = f"Bearer {raw}"
    env = {
        **live_env,
        "GUNICORN_WORKER": "threads",
        "GUNICORN_THREADS": "4",
        "WEB_CONCURRENCY": "1",
        "RECSYS_ANSWER_CACHE_SECONDS": "0",
        "RECSYS_SEARCH_PRELOAD": "false",
    }
    with gunicorn_web(env, tmp_path / "web.log"):
        port = int(env["PORT"])
        alone = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        expected = {user: answer(alone, key, user) for user in [*USERS, "nobody"]}
        alone.close()
        assert all(status == 200 and items for status, items in (expected[u] for u in USERS))
        assert expected["nobody"][0] == 200  # a user never seen: the popular answer

        # When six clients, each on one kept connection, ask for every user in their own order, three times
        failures: list[str] = []

        def client(seed: int) -> None:
            order = [*USERS, "nobody"] * 3
            random.Random(seed).shuffle(order)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                for user in order:
                    got = answer(connection, key, user)
                    if got != expected[user]:
                        failures.append(f"{user}: {got} != {expected[user]}")
            except Exception as exc:  # reported below
                failures.append(repr(exc))
            finally:
                connection.close()

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    # Then every answer was that user's, as served alone (no request saw another's user, key or error)
    assert failures == []
    assert "Traceback" not in (tmp_path / "web.log").read_text(errors="replace")
