"""schemathesis against the live /api/schema/ of a real gunicorn (and Celery worker), once with a
key of each scope: every default check (no server errors, answers that match the schema, valid
requests accepted, invalid ones rejected, auth enforced, deleted resources gone), bounded examples."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.api_keys import api_key_create
from recsys.run import celery_worker_command
from tests.integration.faults import gunicorn_web

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = int(os.environ.get("RECSYS_SCHEMATHESIS_EXAMPLES", "10"))  # per operation and mode
# The key of every scope reaches every operation's code: it gets the examples. A key of one scope is
# refused (403) on the operations of the others and sees the same code on its own: fewer do.
SCOPES = [(["read", "write", "admin"], EXAMPLES), (["read"], 4), (["write"], 4), (["admin"], 4)]


@pytest.fixture
def api_server(live_env, tmp_path):
    # The auth checks send unauthenticated and wrong keys from this one address on purpose, and the
    # negative checks malformed requests from one key (api.limits' penalty box would answer 429).
    env = {
        **live_env,
        "RECSYS_CONTENT_ENCODER": "fake",
        "RECSYS_AUTH_FAILURE_RATE": "1000000/min",
        "RECSYS_MALFORMED_REQUEST_RATE": "1000000/min",
    }
    worker_log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        celery_worker_command(f"schemathesis-{os.getpid()}", level="warning", concurrency=1),
        env=env,
        stdout=worker_log,
        stderr=worker_log,
        start_new_session=True,
    )
    try:
        with gunicorn_web(env, tmp_path / "web.log"):
            yield f"http://127.0.0.1:{env['PORT']}"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=40)
        print((tmp_path / "worker.log").read_text(errors="replace")[-3000:])
    # An unhandled error anywhere in the web process is logged with its traceback.
    logged = (tmp_path / "web.log").read_text(errors="replace")
    assert "Traceback" not in logged, logged[-5000:]


def test_schemathesis_finds_nothing_with_a_key_of_each_scope(api_server, tmp_path):
    failures = []
    for scopes, examples in SCOPES:
        _, key = api_key_create(name=f"schemathesis-{'-'.join(scopes)}", scopes=scopes, rate_limit="1000000/min")
        command = [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{api_server}/api/schema/",
            "--checks",
            "all",
            "--max-examples",
            str(examples),
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
            "--request-timeout",
            "10",
            "--header",
            f"Authorization: Bearer {key}",
        ]
        answer = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        if answer.returncode != 0:
            report = tmp_path / f"schemathesis-{'-'.join(scopes)}.txt"  # the whole report: its tail may be one curl
            report.write_text(answer.stdout + answer.stderr)
            failures.append(
                f"--- key with scopes {scopes} ({report}):\n{answer.stdout[-6000:]}\n{answer.stderr[-2000:]}"
            )
        print(f"scopes {scopes}: {answer.stdout.strip().splitlines()[-1]}")

    assert not failures, "\n".join(failures)
