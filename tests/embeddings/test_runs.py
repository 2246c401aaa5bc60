"""The run lifecycle both kinds share: heartbeat lease, progress, the reaper, finishing only with the claim."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from embeddings import content, runs, services, tasks
from embeddings.learners import LearnerParams
from embeddings.models import Kind, ModelVersion, Status

pytestmark = pytest.mark.django_db


def claims() -> dict[str, ModelVersion]:
    return {
        Kind.COLLABORATIVE: services.collaborative_version_create(params=LearnerParams(factors=4, iterations=2)),
        Kind.CONTENT: content.content_version_create(config={"encoder": "fake", "fields": ["title"]}),
    }


def started(version: ModelVersion, *, lease_left: float) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(
        started_at=timezone.now(), lease_expires_at=timezone.now() + timedelta(seconds=lease_left)
    )


def test_a_waiting_claim_holds_the_queue_lease(settings):
    settings.RECSYS_TRAIN_LEASE_SECONDS = 600
    for version in claims().values():
        assert version.lease_expires_at > timezone.now() + timedelta(seconds=590)

    assert runs.runs_reap() == []


def test_progress_of_either_kind_renews_its_heartbeat_lease(settings):
    settings.RECSYS_TRAIN_HEARTBEAT_SECONDS = 30
    for version in claims().values():
        started(version, lease_left=1)

        runs.run_progress(version, stage="encoding", done=0)

        stored = ModelVersion.objects.get(pk=version.pk)
        assert stored.progress == {"stage": "encoding", "done": 0}
        assert stored.lease_expires_at > timezone.now() + timedelta(seconds=25)


def test_the_beat_reaper_fails_started_runs_whose_heartbeat_stopped_and_frees_the_next_claim():
    versions = claims()
    for version in versions.values():
        started(version, lease_left=-1)  # the last heartbeat is older than the heartbeat lease

    reaped = tasks.training_runs_reap()

    assert sorted(reaped) == sorted(v.pk for v in versions.values())
    for version in versions.values():
        dead = ModelVersion.objects.get(pk=version.pk)
        assert dead.status == Status.FAILED and "stopped sending heartbeats" in dead.error
        assert dead.lease_expires_at is None and dead.finished_at is not None
    assert content.content_version_create(config={"encoder": "fake", "fields": ["title"]}).status == Status.TRAINING


def test_a_live_heartbeat_is_not_reaped():
    for version in claims().values():
        started(version, lease_left=20)

    assert runs.runs_reap() == []


def test_a_claim_no_worker_took_is_failed_once_its_queue_lease_runs_out():
    version = claims()[Kind.CONTENT]
    ModelVersion.objects.filter(pk=version.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert runs.runs_reap(kind=Kind.CONTENT) == [version.pk]
    assert "no worker took the run" in ModelVersion.objects.get(pk=version.pk).error


def test_a_run_declared_dead_cannot_finish_or_start():
    version = claims()[Kind.COLLABORATIVE]
    started(version, lease_left=-1)
    runs.runs_reap()

    with pytest.raises(RuntimeError, match="lost its claim"):
        runs.run_finish(version)
    assert runs.run_execute(version_id=version.pk, work=lambda v: None) is None
    assert ModelVersion.objects.get(pk=version.pk).status == Status.FAILED


def test_the_heartbeat_thread_renews_the_lease_while_a_stage_runs_without_progress(settings, transactional_db):
    settings.RECSYS_TRAIN_HEARTBEAT_SECONDS = 2  # a beat every half second
    version = claims()[Kind.COLLABORATIVE]
    leases = []

    def long_stage(running: ModelVersion) -> None:
        import time

        for _ in range(4):
            time.sleep(0.6)
            leases.append(ModelVersion.objects.values_list("lease_expires_at", flat=True).get(pk=running.pk))
        runs.run_finish(running)

    assert runs.run_execute(version_id=version.pk, work=long_stage) is not None
    assert len(set(leases)) >= 3  # renewed between the stage's reads, by the thread alone
    assert ModelVersion.objects.get(pk=version.pk).status == Status.READY


def test_a_claim_judges_a_lease_running_out_at_one_instant(monkeypatch):
    # Given a started run whose heartbeat lease runs out half a second from now, and a clock that moves on
    # a second each time it is read (the reaper's look and the claim's check are apart in time)
    version = claims()[Kind.COLLABORATIVE]
    started(version, lease_left=0.5)
    ModelVersion.objects.filter(kind=Kind.CONTENT).update(status=Status.FAILED, lease_expires_at=None)
    start = timezone.now()
    ticks = iter(range(1000))
    monkeypatch.setattr(runs.timezone, "now", lambda: start + timedelta(seconds=next(ticks)))

    # When another run is claimed
    with pytest.raises(runs.TrainingAlreadyRunning):
        services.collaborative_version_create(params=LearnerParams(factors=4, iterations=2))

    # Then the claim is refused while the lease was live at its instant, and the run is left to the reaper:
    # never a new claim beside a dead run that is still marked training
    assert ModelVersion.objects.get(pk=version.pk).status == Status.TRAINING
