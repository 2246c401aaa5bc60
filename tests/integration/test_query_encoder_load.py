"""A real gunicorn worker started before any content model exists loads the encoder (MiniLM, seconds)
when a content version becomes active, so the first semantic search does not wait for it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from embeddings.models import ModelVersion
from recsys.api_keys import api_key_create
from recsys.services import items_upsert
from tests.integration.faults import http, ok, poll
from tests.integration.test_serve import wait_for_health

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.minilm]
SEARCH = "/api/v1/search?q=looking+at+the+stars&mode=semantic&limit=3"


def test_the_encoder_of_a_version_activated_after_start_is_loaded_before_any_search(live_env, tmp_path, settings):
    settings.RECSYS_CONTENT_ENCODER = "minilm"
    _, key = api_key_create(name="encoder-load", scopes=["read"])
    env = {**live_env, "RECSYS_CONTENT_ENCODER": "minilm", "WEB_CONCURRENCY": "1"}
    log = tmp_path / "web.log"
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{env['PORT']}"]
    with log.open("wb") as out:
        web = subprocess.Popen([*command, "recsys.wsgi"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_health(env["PORT"], web)
        assert http(env["PORT"], key, "GET", SEARCH).status == 409  # nothing to preload at start

        # The first items build and activate a content version (here, eagerly in this process).
        items_upsert(
            rows=[
                {"id": "scope", "title": "Backyard telescope", "text": "watch planets and galaxies at night"},
                {"id": "pasta", "title": "Fresh pasta", "text": "a recipe with garlic, basil and tomato"},
            ]
        )
        version = ModelVersion.objects.get(kind="content", status="active")
        poll(
            lambda: f"search query encoder of content v{version.pk} loaded" in log.read_text(errors="replace"),
            120,
            "the web worker to load the new version's encoder",
        )
        reply = http(env["PORT"], key, "GET", SEARCH)
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(timeout=30)

    assert ok(reply)["items"][0]["id"] == "scope"
    assert reply.seconds < 1.5, (reply.seconds, log.read_text(errors="replace")[-2000:])
