"""A worker killed with -9 in the middle of a training run: serving is unchanged, the run's
heartbeat stops, it is marked failed within the heartbeat lease, and the next run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from embeddings import runs, services
from embeddings.learners import LearnerParams
from embeddings.models import ModelVersion, Status
from embeddings.selectors import active_version
from recsys.celery import app
from recsys.run import celery_worker_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SMALL = LearnerParams(factors=8, iterations=5)
HEARTBEAT = 4  # seconds without a heartbeat that make a run dead (45 by default)


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_training_fails_the_run_from_its_missing_heartbeat_and_the_next_run_starts(
    live_env, communities, settings
):
    """The claim's lease stays at its default (600 s): only the missing heartbeat frees it."""
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_TRAIN_HEARTBEAT_SECONDS = HEARTBEAT
    first = services.collaborative_model_train(version_id=services.collaborative_version_create(params=SMALL).pk)
    endless = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=1_000_000))
    env = {**live_env, "RECSYS_TRAIN_HEARTBEAT_SECONDS": str(HEARTBEAT), "RECSYS_CF_TUNE": "false"}
    env.pop("RECSYS_TRAIN_LEASE_SECONDS", None)
    worker = subprocess.Popen(
        celery_worker_command(f"kill-test-{os.getpid()}", queues="training", level="warning", concurrency=1),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # send_task goes to the broker even though this test process runs tasks eagerly.
        with pytest.warns(Warning, match="always_eager"):
            app.send_task("embeddings.tasks.collaborative_model_train", args=[endless.pk], queue="training")
        wait_for(
            lambda: ModelVersion.objects.get(pk=endless.pk).progress.get("stage") in {"evaluating", "fitting"},
            60,
            "the run to start learning",
        )
        # One long fit, with no progress report, outlasts its heartbeat lease twice over: never reaped.
        time.sleep(2 * HEARTBEAT)
        assert runs.runs_reap() == [] and ModelVersion.objects.get(pk=endless.pk).status == Status.TRAINING
        with pytest.raises(runs.TrainingAlreadyRunning):
            services.collaborative_version_create(params=SMALL)

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        killed = time.monotonic()
        assert active_version(kind="collaborative").pk == first.pk

        retry = claim_when_free(seconds=HEARTBEAT * 4)
        freed_after = time.monotonic() - killed
        services.collaborative_model_train(version_id=retry.pk)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)

    assert freed_after <= HEARTBEAT + 3, freed_after
    dead = ModelVersion.objects.get(pk=endless.pk)
    assert dead.status == Status.FAILED and "stopped sending heartbeats" in dead.error
    assert active_version(kind="collaborative").pk == retry.pk


def claim_when_free(seconds: float) -> ModelVersion:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return services.collaborative_version_create(params=SMALL)
        except runs.TrainingAlreadyRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
