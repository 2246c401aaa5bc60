"""Through real processes (gunicorn, Celery worker, beat): items sent over the API become
searchable and similar-listable seconds later, with no training run asked for."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest

from recsys.api_keys import api_key_create
from tests.integration.faults import http, ok, poll
from tests.integration.test_serve import wait_for_health

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def answer(port: str, key: str, path: str) -> Any:
    """A GET's body; None while no content version exists yet (409), any other failure fails."""
    reply = http(port, key, "GET", path, timeout=10)
    return None if reply.status == 409 else ok(reply)


def found(port: str, key: str, path: str) -> list[str]:
    """The ids a search answers; none while no content version exists yet."""
    return [item["id"] for item in (answer(port, key, path) or {"items": []})["items"]]


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
        ok(http(port, key, "POST", "/api/v1/items/batch", {"items": catalogue}, timeout=10))

        # The first items make the worker build a content version (nobody asked for training).
        first = poll(
            lambda: "telescope-0" in found(port, key, "/api/v1/search?q=telescope+basics&mode=semantic"),
            30,
            "searchable",
        )
        ok(
            http(
                port,
                key,
                "PUT",
                "/api/v1/items/latecomer",
                {"title": "telescope gear", "text": "telescope tips"},
                timeout=10,
            ),
            201,
        )
        later = poll(
            lambda: (
                (answer(port, key, "/api/v1/items/latecomer/similar?space=content") or {}).get("strategy") == "content"
            ),
            30,
            "similar-listable",
        )
        similar = ok(http(port, key, "GET", "/api/v1/items/latecomer/similar?space=content&limit=3", timeout=10))
        searched = ok(http(port, key, "GET", "/api/v1/search?q=telescope+gear&mode=semantic&limit=3", timeout=10))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])

    print(f"searchable after {first:.1f} s (first build), a later item similar-listable after {later:.1f} s")
    assert all(item["id"].startswith("telescope") for item in similar["items"])
    assert "latecomer" in [item["id"] for item in searched["items"]]
