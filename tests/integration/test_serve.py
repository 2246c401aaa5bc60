"""`make serve` runs web, worker and beat together and stops all of them on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for_health(port: str, proc: subprocess.Popen, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the supervisor exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            time.sleep(0.3)
    raise AssertionError("server never became healthy")


def test_serve_starts_web_worker_and_beat_and_sigterm_stops_them_all(live_env, tmp_path):
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.run", "serve"], env=live_env, stdout=log, stderr=log)
    children: list[psutil.Process] = []
    try:
        health = wait_for_health(live_env["PORT"], proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        commands = " ".join(" ".join(c.cmdline()) for c in children)

        assert health["database"] == "ok" and health["redis"] == "ok"
        assert "gunicorn" in commands and "worker" in commands and "beat" in commands
        # No control socket at the per-user path every gunicorn master on the host would share.
        assert b"Control socket listening" not in (tmp_path / "serve.log").read_bytes()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running: {[c.cmdline() for c in alive]}"
    finally:
        for process in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
            if process.is_running():
                process.kill()
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
