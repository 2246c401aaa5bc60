"""Through real processes (gunicorn, Celery worker, beat): items sent over the API become
searchable and similar-listable seconds later, with no training run asked for."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from recsys.api_keys import api_key_create
from tests.integration.test_serve import wait_for_health

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def call(port: str, key: str, method: str, path: str, body: object = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (our own server on loopback)
        return json.loads(answer.read())


def poll(predicate, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if predicate():
                return time.monotonic() - started
        except urllib.error.HTTPError as error:  # 409 until the first content version exists
            assert error.code == 409, error.read()
        time.sleep(0.25)
    raise AssertionError(f"not true within {seconds} s")


def test_items_become_searchable_and_similar_listable_seconds_after_ingestion(live_env, tmp_path):
    _, key = api_key_create(name="freshness", scopes=["read", "write"])
    env = {**live_env, "RECSYS_CONTENT_ENCODER": "fake"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.run", "serve"], env=env, stdout=log, stderr=log)
    port = env["PORT"]
    try:
        wait_for_health(port, proc)
        catalogue = [
            {"id": f"{topic}-{n}", "title": f"{topic} {word}", "text": f"all about {topic} and {word}"}
            for topic in ("telescope", "recipe")
            for n, word in enumerate(["basics", "tips", "gear", "history"])
        ]
        call(port, key, "POST", "/api/v1/items/batch", {"items": catalogue})

        # The first items make the worker build a content version (nobody asked for training).
        first = poll(
            lambda: (
                "telescope-0"
                in [i["id"] for i in call(port, key, "GET", "/api/v1/search?q=telescope+basics&mode=semantic")["items"]]
            ),
            30,
        )
        call(port, key, "PUT", "/api/v1/items/latecomer", {"title": "telescope gear", "text": "telescope tips"})
        later = poll(
            lambda: call(port, key, "GET", "/api/v1/items/latecomer/similar?space=content")["strategy"] == "content",
            30,
        )
        similar = call(port, key, "GET", "/api/v1/items/latecomer/similar?space=content&limit=3")
        searched = call(port, key, "GET", "/api/v1/search?q=telescope+gear&mode=semantic&limit=3")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])

    print(f"searchable after {first:.1f} s (first build), a later item similar-listable after {later:.1f} s")
    assert all(item["id"].startswith("telescope") for item in similar["items"])
    assert "latecomer" in [item["id"] for item in searched["items"]]
