"""Through real processes (gunicorn, Celery worker, beat): after a collaborative run, a new item
sent with text gets a mapped vector in the active collaborative version seconds later, without a
retrain, and similar items then answer from the collaborative space."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from recsys.api_keys import api_key_create
from tests.integration.faults import http, ok, poll
from tests.integration.test_serve import wait_for_health

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPICS = {"a": "telescope planets galaxies comet stars", "b": "pasta garlic basil tomato sauce"}


def test_a_new_item_with_text_is_placed_in_the_collaborative_space_without_a_retrain(live_env, tmp_path):
    _, key = api_key_create(name="cold", scopes=["read", "write", "admin"])
    env = {**live_env, "RECSYS_CONTENT_ENCODER": "fake", "RECSYS_CF_TUNE": "false"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.run", "serve"], env=env, stdout=log, stderr=log)
    port = env["PORT"]
    try:
        wait_for_health(port, proc)
        items = [
            {"id": f"i{i}", "title": f"{TOPICS['a' if i < 15 else 'b']} {i}", "text": TOPICS["a" if i < 15 else "b"]}
            for i in range(30)
        ]
        ok(http(port, key, "POST", "/api/v1/items/batch", {"items": items}, timeout=10))
        events = [
            {"user": f"u{u}", "item": f"i{(u % 2) * 15 + (u * 7 + k) % 15}", "type": "purchase"}
            for u in range(40)
            for k in range(6)
        ]
        ok(http(port, key, "POST", "/api/v1/interactions", {"interactions": events}, timeout=10))
        poll(lambda: "content" in ok(http(port, key, "GET", "/api/v1/items/i0"))["vectors"], 60, "content version")
        run = ok(http(port, key, "POST", "/api/v1/models/train", {"kind": "collaborative"}), 202)
        poll(
            lambda: any(
                v["version"] == run["training_run"] and v["status"] == "active"
                for v in ok(http(port, key, "GET", "/api/v1/models"))
            ),
            120,
            "collaborative version",
        )

        started = time.monotonic()
        ok(http(port, key, "PUT", "/api/v1/items/latecomer", {"title": "telescope", "text": TOPICS["a"]}), 201)
        placed = poll(
            lambda: "collaborative" in ok(http(port, key, "GET", "/api/v1/items/latecomer"))["vectors"],
            30,
            "mapped collaborative vector",
        )
        similar = ok(http(port, key, "GET", "/api/v1/items/latecomer/similar?space=collaborative&limit=5"))
        models = ok(http(port, key, "GET", "/api/v1/models"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])

    print(f"mapped {time.monotonic() - started:.1f} s after the PUT (poll reported {placed:.1f} s)")
    assert similar["strategy"] == "collaborative"
    assert sum(int(item["id"][1:]) < 15 for item in similar["items"]) >= 4
    assert len([v for v in models if v["kind"] == "collaborative"]) == 1  # no retrain happened
