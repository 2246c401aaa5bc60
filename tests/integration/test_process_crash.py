"""A crashed child of `recsys.run serve` costs its own work only: SIGKILL of the Celery worker
leaves the API answering while a new worker comes up, and a killed web server comes back."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from recsys.celery import app
from tests.integration.faults import http, poll, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def supervised(role: str) -> psutil.Process | None:
    """The live direct child of the supervisor (a child of this test) whose command names ``role``."""
    supervisor = next(p for p in psutil.Process().children() if "recsys.run" in " ".join(p.cmdline()))
    for child in supervisor.children():
        try:
            if role in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def healthy(port: str) -> bool:
    try:
        return http(port, "", "GET", "/api/v1/health", timeout=2).status == 200
    except OSError:  # refused while nothing listens
        return False


def test_a_killed_worker_is_restarted_and_web_keeps_answering_then_a_killed_web_comes_back(live_env, tmp_path):
    env = {**live_env, "RECSYS_DATA_DIR": str(tmp_path)}
    port = env["PORT"]
    with serving(env, tmp_path / "serve.log"):
        worker, web = supervised("realtime@%h"), supervised("gunicorn")
        assert worker and web
        pool = worker.children()

        # When the worker's main process is killed
        os.kill(worker.pid, signal.SIGKILL)
        # Then the API answers throughout, and a new worker comes up and answers the broker
        statuses = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            statuses.append(http(port, "", "GET", "/api/v1/health", timeout=5).status)
            time.sleep(0.25)
        assert set(statuses) == {200}, statuses
        poll(lambda: (new := supervised("realtime@%h")) is not None and new.pid != worker.pid, 20, "a new worker")
        poll(lambda: bool(app.control.ping(timeout=1.0)), 60, "the new worker to answer a ping")
        assert supervised("gunicorn").pid == web.pid, "web was restarted"
        assert not [p for p in pool if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "orphaned pool"

        # When the web server's master is killed, it comes back on the same port
        os.kill(web.pid, signal.SIGKILL)
        restarted = poll(lambda: (new := supervised("gunicorn")) is not None and new.pid != web.pid, 20, "new web")
        back = poll(lambda: healthy(port), 30, "web to answer again")
        back += restarted
    print(f"web answered again {back:.1f} s after its master was killed")
