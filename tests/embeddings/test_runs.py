"""The run lifecycle both kinds share: heartbeat lease, progress, the reaper, finishing only with the claim."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from embeddings import content, runs, services, tasks
from embeddings.learners import LearnerParams
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from embeddings.vectors import tables

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


def database_away() -> Callable[[], None]:
    """PostgreSQL gone for this test's connections, for real: the open ones are terminated by the
    server, and new ones go to a port nothing listens on (every thread's connection reads the same
    settings) until the returned function is called."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = "1"
    connection.close()
    return lambda: connection.settings_dict.__setitem__("PORT", port)


def test_a_heartbeat_outlives_a_short_database_outage(settings, transactional_db):
    # Given a run whose heartbeat renews a 2 s lease every half second
    settings.RECSYS_TRAIN_HEARTBEAT_SECONDS = 2
    version = claims()[Kind.COLLABORATIVE]

    def stage(running: ModelVersion) -> None:
        time.sleep(0.7)  # the heartbeat thread holds a connection by now
        # When PostgreSQL goes away for a second (two missed beats) and comes back
        database_back = database_away()
        time.sleep(1.0)
        database_back()
        # Then the heartbeat goes on: the run is alive after more than a lease
        time.sleep(2.5)
        assert runs.runs_reap() == []
        runs.run_finish(running)

    assert runs.run_execute(version_id=version.pk, work=stage) is not None
    assert ModelVersion.objects.get(pk=version.pk).status == Status.READY


def test_a_run_broken_by_a_database_outage_is_failed_as_soon_as_the_database_returns(settings, transactional_db):
    settings.RECSYS_TRAIN_HEARTBEAT_SECONDS = 10
    comeback = []

    def stage(running: ModelVersion) -> None:
        # When PostgreSQL goes away under the run, for about a second and a half
        comeback.append(threading.Timer(1.5, database_away()))
        comeback[0].start()
        ModelVersion.objects.count()  # raises: the run breaks

    # Then the run raises its own error, and is marked failed once the database is back, not a
    # lease and a reaper's round later
    version = claims()[Kind.CONTENT]
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError):
            runs.run_execute(version_id=version.pk, work=stage)
        seconds = time.monotonic() - started
    finally:
        comeback[0].join()
    failed = ModelVersion.objects.get(pk=version.pk)
    assert failed.status == Status.FAILED and failed.error.startswith("OperationalError")
    assert failed.lease_expires_at is None
    assert 1.5 <= seconds < 5


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


@pytest.fixture
def real_outages(transactional_db: None) -> Iterator[None]:
    """Committed data, for tests whose database goes away for real (a test transaction would be
    lost with its connection); the versions' vector tables (not Django's) dropped before the flush."""
    yield
    for version_id in ModelVersion.objects.values_list("pk", flat=True):
        tables.tables_drop(version_id)


def trained_but_never_judged(monkeypatch: pytest.MonkeyPatch, settings) -> ModelVersion:  # type: ignore[no-untyped-def]
    """A collaborative run that stored its work (ready), three minutes ago, and then lost PostgreSQL
    for a second and a half, for real, before it could be judged."""
    settings.RECSYS_CF_TUNE = False
    version = services.collaborative_version_create()
    comeback = []
    train = services._train

    def train_then_lose_the_database(running: ModelVersion) -> None:
        train(running)  # ends with run_finish: ready
        comeback.append(threading.Timer(1.5, database_away()))
        comeback[0].start()

    with monkeypatch.context() as patch:
        patch.setattr(services, "_train", train_then_lose_the_database)
        try:
            with pytest.raises(OperationalError):
                services.collaborative_model_train(version_id=version.pk)
        finally:
            for timer in comeback:
                timer.join()
    ModelVersion.objects.filter(pk=version.pk).update(finished_at=timezone.now() - timedelta(minutes=3))
    version.refresh_from_db()
    assert version.status == Status.READY and version.progress["stage"] == runs.CONCLUDING
    return version


def test_a_run_that_stored_its_work_but_was_never_judged_is_concluded_by_the_reapers_beat(
    monkeypatch, settings, real_outages, communities
):
    version = trained_but_never_judged(monkeypatch, settings)

    # When the reaper's beat runs (it sends the run's task again, which only concludes it)
    tasks.training_runs_reap()

    # Then the version is judged and served, and nothing is sent again after that
    version.refresh_from_db()
    assert version.status == Status.ACTIVE and version.progress["stage"] == "done"
    assert ActiveVersion.objects.get(kind=Kind.COLLABORATIVE).version_id == version.pk
    assert runs.runs_unconcluded() == []


def test_an_unjudged_run_is_sent_again_at_most_every_few_minutes_and_not_over_a_later_activation(
    monkeypatch, settings, real_outages, communities
):
    version = trained_but_never_judged(monkeypatch, settings)
    now = timezone.now()

    assert [v.pk for v in runs.runs_unconcluded(now=now)] == [version.pk]
    runs.run_resent(version, now=now)
    assert runs.runs_unconcluded(now=now + timedelta(seconds=60)) == []  # the training worker may be busy
    assert [v.pk for v in runs.runs_unconcluded(now=now + timedelta(minutes=11))] == [version.pk]
    assert runs.runs_unconcluded(now=now + timedelta(days=2)) == []  # left to the operator

    # When a later run is activated before the resent task runs (it waited in the queue)
    later = services.collaborative_model_train(version_id=services.collaborative_version_create().pk)
    assert later.status == Status.ACTIVE

    # Then it is no longer due, and its task concludes it without serving it
    assert runs.runs_unconcluded(now=now + timedelta(minutes=11)) == []
    services.collaborative_model_train(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == Status.READY and version.progress["stage"] == "done"
    assert ActiveVersion.objects.get(kind=Kind.COLLABORATIVE).version_id == later.pk


def test_a_version_that_serves_worse_is_judged_once_and_a_rollback_is_never_undone(
    monkeypatch, settings, real_outages, communities
):
    first = services.collaborative_model_train(version_id=services.collaborative_version_create().pk)
    worse = trained_but_never_judged(monkeypatch, settings)
    ModelVersion.objects.filter(pk=worse.pk).update(metrics={"ndcg@10": 0.0})

    # A retry of its task judges it: it stays ready (it serves worse), and is never sent again
    services.collaborative_model_train(version_id=worse.pk)
    worse.refresh_from_db()
    assert worse.status == Status.READY and worse.progress["stage"] == "done"
    assert ActiveVersion.objects.get(kind=Kind.COLLABORATIVE).version_id == first.pk
    assert runs.runs_unconcluded(now=timezone.now() + timedelta(hours=1)) == []


def test_an_operator_who_serves_an_unjudged_version_and_rolls_back_keeps_the_rollback(
    monkeypatch, settings, real_outages, communities
):
    first = services.collaborative_model_train(version_id=services.collaborative_version_create().pk)
    unjudged = trained_but_never_judged(monkeypatch, settings)

    runs.model_version_activate(version_id=unjudged.pk)
    runs.model_version_activate(version_id=first.pk)

    assert runs.runs_unconcluded(now=timezone.now() + timedelta(hours=1)) == []
    assert ModelVersion.objects.get(pk=unjudged.pk).progress["stage"] == "done"
