"""Redis (on a Unix socket, as the embedded one listens) stopped while the worker holds tasks it
has not acknowledged: the worker survives the outage without a restart and takes new tasks when
Redis returns, and a request that enqueues answers 503 at once instead of retrying for 19 s."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from embeddings import tasks
from recsys.api_keys import api_key_create
from recsys.celery import app
from recsys.redis_urls import celery_redis_url
from tests.integration.faults import PrivateRedis, http, ok, poll, serving, train
from tests.integration.test_process_crash import supervised
from tests.integration.test_redis_outage import catalogue, communities

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HELD_TASKS = 4


def test_redis_outage_with_tasks_in_flight_leaves_the_worker_running_and_train_fails_fast(live_env, tmp_path):
    # A short folder: a socket path has at most 108 bytes.
    redis = PrivateRedis(0, Path(tempfile.mkdtemp(prefix="rq-")), unix_socket=True)
    redis.start()
    env = {**live_env, "REDIS_URL": redis.url, "RECSYS_DATA_DIR": str(tmp_path), "RECSYS_CONTENT_ENCODER": "fake"}
    port = env["PORT"]
    _, key = api_key_create(name="redis-in-flight", scopes=["read", "write", "admin"])
    log = tmp_path / "serve.log"
    try:
        with serving({**env, "RECSYS_CF_TUNE": "false"}, log):
            ok(http(port, key, "POST", "/api/v1/items/batch", {"items": catalogue()}))
            ok(http(port, key, "POST", "/api/v1/interactions", {"interactions": communities()}))
            worker = supervised("maintenance@%h")
            assert worker is not None
            # Given tasks the worker has taken and not acknowledged (held until their countdown)
            with app.connection_for_write(celery_redis_url(redis.url, 0)) as connection:
                for _ in range(HELD_TASKS):
                    # send_task: the test process runs tasks eagerly, this must go to the worker
                    app.send_task(tasks.popularity_refresh.name, countdown=60, queue="default", connection=connection)
            poll(lambda: redis.client().hlen("unacked") >= HELD_TASKS, 20, "the worker to hold the tasks")

            # When Redis stops
            redis.stop()
            refused = http(port, key, "POST", "/api/v1/models/train", {"kind": "collaborative"})
            time.sleep(8)  # the worker notices, restores what it holds, and retries its connection

            # Then training is refused at once, with the error body of the API
            assert refused.status == 503 and refused.body["error"]["code"] == "service_unavailable", refused.body
            assert refused.seconds < 2, refused.seconds

            # When Redis returns, the same worker takes new tasks
            redis.start()
            poll(lambda: http(port, key, "GET", "/api/v1/health").body.get("redis") == "ok", 10, "redis: ok")
            train(port, key, seconds=120)
            assert supervised("maintenance@%h").pid == worker.pid, "the worker died and was restarted"
    finally:
        redis.stop()
    assert "Unrecoverable error" not in log.read_text(errors="replace")
