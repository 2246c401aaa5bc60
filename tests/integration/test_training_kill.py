"""A worker killed with -9 in the middle of a training run: serving is unchanged, the run's
lease expires, it is marked failed, and the next run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from embeddings import services
from embeddings.learners import LearnerParams
from embeddings.models import ModelVersion, Status
from embeddings.selectors import active_version
from recsys.celery import app
from recsys.run import celery_worker_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SMALL = LearnerParams(factors=8, iterations=5)


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_training_leaves_serving_alone_and_the_next_run_succeeds(live_env, communities, settings):
    settings.RECSYS_CF_TUNE = False
    first = services.collaborative_model_train(version_id=services.collaborative_version_create(params=SMALL).pk)
    endless = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=1_000_000))
    env = {**live_env, "RECSYS_TRAIN_LEASE_SECONDS": "5", "RECSYS_CF_TUNE": "false"}
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
        time.sleep(1)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

        assert active_version(kind="collaborative").pk == first.pk
        with pytest.raises(services.TrainingAlreadyRunning):
            services.collaborative_version_create(params=SMALL)

        time.sleep(6)  # the dead worker's lease (5 s) runs out
        retry = services.collaborative_version_create(params=SMALL)
        services.collaborative_model_train(version_id=retry.pk)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)

    abandoned = ModelVersion.objects.get(pk=endless.pk)
    assert abandoned.status == Status.FAILED and "lease" in abandoned.error
    assert active_version(kind="collaborative").pk == retry.pk
