"""Workers per queue, as real processes: a training run in progress does not delay fold-ins, two
training workers never train at once, and a worker killed with a task in hand loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from embeddings import services
from embeddings.learners import LearnerParams
from embeddings.models import ModelVersion, Status
from embeddings.selectors import active_version
from embeddings.vectors.rows import vectors_of
from recsys import redis_store
from recsys.celery import app
from recsys.models import User
from recsys.run import WORKERS, celery_worker_command
from recsys.services import interactions_ingest
from tests.integration.faults import poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SMALL = LearnerParams(factors=8, iterations=5)
ENDLESS = {"RECSYS_CF_TUNE": "false", "RECSYS_CF_FACTORS": "8", "RECSYS_CF_ITERATIONS": "1000000"}


@pytest.fixture
def workers(live_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``start(kind, name)`` → a Celery worker of ``recsys.run.WORKERS[kind]``, logging to tmp_path/<name>.log."""
    started: list[subprocess.Popen[bytes]] = []

    def start(kind: str, name: str, **env: str) -> subprocess.Popen[bytes]:
        queues, concurrency = WORKERS[kind]
        log = (tmp_path / f"{name}.log").open("wb")
        command = celery_worker_command(f"{name}-{os.getpid()}", queues=queues, level="info", concurrency=concurrency)
        worker = subprocess.Popen(command, env={**live_env, **env}, stdout=log, stderr=log, start_new_session=True)
        started.append(worker)
        destination = [f"{name}-{os.getpid()}@{os.uname().nodename}"]
        poll(lambda: bool(app.control.ping(destination=destination, timeout=0.5)), 60, f"worker {name} to answer")
        return worker

    yield start
    for worker in started:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)


@pytest.fixture
def through_broker() -> Iterator[None]:
    """This test process sends its tasks to the broker (the suite otherwise runs them eagerly)."""
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = eager


def stored_vector(user: str) -> bool:
    version = active_version(kind="collaborative")
    user_id = User.objects.get(external_id=user).pk
    return bool(vectors_of(version.user_table, "user_id", [user_id]))


def new_user_events(user: str) -> list[dict[str, str]]:
    return [
        {"user": user, "item": f"i{item}", "type": "purchase", "timestamp": "2026-03-01T00:00:00Z"} for item in range(4)
    ]


def endless_run_started(workers: Callable[..., subprocess.Popen[bytes]]) -> ModelVersion:
    """A training worker busy with a run that does not end (a million iterations)."""
    workers("training", "training", **ENDLESS)
    app.send_task("embeddings.tasks.collaborative_model_retrain")  # routed to "training" by name
    poll(
        lambda: (
            ModelVersion.objects.filter(status=Status.TRAINING, progress__stage__in=["fitting", "evaluating"])
            .exclude(params__iterations=SMALL.iterations)
            .exists()
        ),
        60,
        "the endless run to start learning",
    )
    return ModelVersion.objects.get(status=Status.TRAINING)


def test_a_fold_in_lands_within_two_seconds_while_a_training_run_is_in_progress(
    live_env, communities, workers, through_broker
):
    services.collaborative_model_train(version_id=services.collaborative_version_create(params=SMALL).pk)
    workers("realtime", "realtime")
    running = endless_run_started(workers)

    # When a new user sends events while the training worker is busy
    sent = time.monotonic()
    assert not interactions_ingest(rows=new_user_events("newcomer")).errors
    # Then the realtime worker folds them in within two seconds (a one-second debounce included)
    took = poll(lambda: stored_vector("newcomer"), 2.0, "the newcomer's fold-in")
    print(f"fold-in stored {time.monotonic() - sent:.2f} s after the events, during training")
    assert took <= 2.0
    assert ModelVersion.objects.get(pk=running.pk).status == Status.TRAINING


def test_two_training_workers_never_train_at_once(live_env, communities, workers, through_broker, tmp_path):
    running = endless_run_started(workers)
    workers("training", "training-2", **ENDLESS)

    # When the schedule asks for another run while the first worker trains
    app.send_task("embeddings.tasks.collaborative_model_retrain")
    # Then the second worker takes it and skips it (the first run holds the lease): one run only
    poll(
        lambda: "succeeded" in (tmp_path / "training-2.log").read_text(errors="replace"),
        30,
        "the second worker to finish the task",
    )
    assert "collaborative_model_retrain" in (tmp_path / "training-2.log").read_text()
    assert list(ModelVersion.objects.filter(status=Status.TRAINING).values_list("pk", flat=True)) == [running.pk]
    assert ModelVersion.objects.count() == 1


def test_a_realtime_worker_killed_with_a_fold_in_in_hand_loses_nothing(live_env, communities, workers, through_broker):
    services.collaborative_model_train(version_id=services.collaborative_version_create(params=SMALL).pk)
    realtime = workers("realtime", "realtime")
    broker = redis_store.client("broker")

    # Given a fold-in the realtime worker has taken (held, unacknowledged, until its countdown)
    assert not interactions_ingest(rows=new_user_events("survivor")).errors
    poll(lambda: broker.hlen("unacked") >= 1, 10, "the worker to take the fold-in")
    # When the worker is killed before it runs it
    os.killpg(realtime.pid, signal.SIGKILL)
    realtime.wait(timeout=10)
    time.sleep(1.5)  # past the countdown: nobody ran it
    assert not stored_vector("survivor")

    # Then the maintenance worker's sweep (beat sends it every minute) folds the user in
    workers("maintenance", "maintenance")
    app.send_task("embeddings.tasks.users_fold_in_sweep")
    poll(lambda: stored_vector("survivor"), 30, "the sweep to fold the survivor in")
