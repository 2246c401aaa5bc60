"""Training runs of any kind, one lifecycle: claim, heartbeat lease, progress, finish, activate, prune, reap.

A claim is a ``training`` version row holding a lease. While it waits in the queue the lease
lasts RECSYS_TRAIN_LEASE_SECONDS; once a worker runs it, a heartbeat thread renews it every few
seconds for RECSYS_TRAIN_HEARTBEAT_SECONDS, so a worker that dies (``kill -9``, out of memory)
is noticed within about a minute: the reaper marks its run failed and the next run may start.
Collaborative training (``services``) and content builds (``content``) supply only their work.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection, transaction
from django.utils import timezone

from embeddings.answer_cache import answers_invalidate_all
from embeddings.maps import embedding_map_on_activation
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from embeddings.selectors import active_version_serving_forget
from embeddings.vectors import tables
from recsys.db import lock_not_available
from recsys.errors import Conflict, ModelNotReady, NotFound, ServiceUnavailable

logger = logging.getLogger(__name__)
HEARTBEATS_PER_LEASE = 4  # renewals per heartbeat lease: a slow database round trip or two is no death
# A run's stage once its work is stored (``ready``) and until it has been judged: activated, or kept
# ready because it serves worse than the active version. A worker that died, or a database that went
# away, in between leaves it there; the reaper's beat sends the run's task again (runs_unconcluded).
CONCLUDING = "concluding"
CONCLUDE_AFTER_SECONDS = 120  # a run still concluding this long after it finished lost its worker
CONCLUDE_RESEND_SECONDS = 600  # at most one resend per this long (the training worker may be busy)
CONCLUDE_WITHIN = timedelta(days=1)  # older unconcluded runs are left to the operator


class TrainingAlreadyRunning(Conflict):
    """Another run of the same kind holds an unexpired lease."""


class ModelVersionNotReady(ModelNotReady):
    """The version cannot be served (failed, still training, or its vectors are gone)."""


# ---- claim and enqueue --------------------------------------------------------------------------


def run_claim(*, kind: str, algorithm: str, params: dict[str, Any]) -> ModelVersion:
    """Claim a run of ``kind`` (refused while another one's lease is live)."""
    with transaction.atomic():
        # A transaction-scoped advisory lock per kind serialises concurrent claims (it works
        # before any version exists, unlike a row lock).
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"recsys:train:{kind}"])
        # One instant for both: a lease running out between the reaper's look and this one would let the
        # claim through with the dead run left unreaped.
        now = timezone.now()
        runs_reap(kind=kind, now=now)
        running = ModelVersion.objects.filter(kind=kind, status=Status.TRAINING, lease_expires_at__gt=now).first()
        if running:
            raise TrainingAlreadyRunning(f"version {running.pk} is training until {running.lease_expires_at}")
        return ModelVersion.objects.create(
            kind=kind,
            algorithm=algorithm,
            params=params,
            lease_expires_at=timezone.now() + timedelta(seconds=settings.RECSYS_TRAIN_LEASE_SECONDS),
        )


def run_enqueue(*, version_id: int, task: Any) -> str:
    """Send a claimed run to ``task`` (a Celery task taking the version id); if the broker is away
    the claim is released as failed."""
    task_id = str(uuid.uuid4())
    try:
        ModelVersion.objects.filter(pk=version_id).update(task_id=task_id)
        task.apply_async((version_id,), task_id=task_id)
    except Exception as error:  # kombu raises several connection error types
        try:
            _fail(ModelVersion.objects.get(pk=version_id), error)
        except DatabaseError:  # PostgreSQL away too: the reaper frees the claim when its queue lease ends
            logger.warning("version %s could not be released; the reaper will do it", version_id)
        if isinstance(error, DatabaseError):
            raise
        raise ServiceUnavailable("the task queue (Redis) is unavailable; retry shortly") from error
    return task_id


# ---- running: heartbeat, progress, finish -------------------------------------------------------


def run_execute(*, version_id: int, work: Callable[[ModelVersion], None]) -> ModelVersion | None:
    """Run ``work`` on a claimed version while a heartbeat keeps its lease; on any failure the
    version is marked failed (its tables dropped) and serving is untouched. None: the run is no
    longer claimed (a retry of a finished run, or one reaped while it waited)."""
    started = ModelVersion.objects.filter(pk=version_id, status=Status.TRAINING).update(
        started_at=timezone.now(), lease_expires_at=_heartbeat_lease()
    )
    if not started:
        return None
    version = ModelVersion.objects.get(pk=version_id)
    try:
        with _heartbeat(version.pk):
            work(version)
    except Exception as error:
        logger.exception("%s version %s failed", version.kind, version.pk)
        _fail_once_reachable(version, error)
        raise
    return version


def run_unconcluded(version_id: int) -> bool:
    """Whether a retry of a finished run should judge it: it stored its work and was never judged
    (see CONCLUDING), and nothing was activated since it finished (a newer run, or an operator's
    choice, is not undone by a task that waited in the queue; such a run is concluded unjudged)."""
    version = ModelVersion.objects.filter(pk=version_id, status=Status.READY, progress__stage=CONCLUDING).first()
    if version is None:
        return False
    if _activated_since(version):
        _concluded(version)
        return False
    return True


def _activated_since(version: ModelVersion) -> bool:
    active = ActiveVersion.objects.filter(kind=version.kind).first()
    if active is None:
        return False
    return active.version_id > version.pk or (
        version.finished_at is not None and active.activated_at > version.finished_at
    )


def _concluded(version: ModelVersion) -> None:
    """Mark a run judged (stage ``done``), unless it already is."""
    progress = {key: value for key, value in version.progress.items() if key != "resent_at"}
    progress["stage"] = "done"
    if ModelVersion.objects.filter(pk=version.pk, progress__stage=CONCLUDING).update(progress=progress):
        version.progress = progress


def runs_unconcluded(*, now: datetime | None = None) -> list[ModelVersion]:
    """Per kind, the newest run that stored its work more than CONCLUDE_AFTER_SECONDS ago (within
    CONCLUDE_WITHIN) and was never judged, when nothing was activated since it finished, and not
    sent again within CONCLUDE_RESEND_SECONDS (``run_resent`` records a send)."""
    now = now or timezone.now()
    due = []
    for kind in Kind.values:
        version = (
            ModelVersion.objects.filter(
                kind=kind,
                status=Status.READY,
                progress__stage=CONCLUDING,
                finished_at__lte=now - timedelta(seconds=CONCLUDE_AFTER_SECONDS),
                finished_at__gte=now - CONCLUDE_WITHIN,
            )
            .order_by("-pk")
            .first()
        )
        if version is None or _activated_since(version):
            continue
        if now.timestamp() - version.progress.get("resent_at", 0) >= CONCLUDE_RESEND_SECONDS:
            due.append(version)
    return due


def run_resent(version: ModelVersion, *, now: datetime | None = None) -> None:
    """Record that a never-judged run's task was sent again (only while it is still unjudged)."""
    progress = {**version.progress, "resent_at": (now or timezone.now()).timestamp()}
    ModelVersion.objects.filter(pk=version.pk, status=Status.READY, progress__stage=CONCLUDING).update(
        progress=progress
    )


def run_progress(version: ModelVersion, **progress: Any) -> None:
    """Record a run's progress (merged into what it reported before) and renew its lease."""
    version.progress = {**version.progress, **progress}
    ModelVersion.objects.filter(pk=version.pk, status=Status.TRAINING).update(
        progress=version.progress, lease_expires_at=_heartbeat_lease()
    )


def run_tables_created(version: ModelVersion) -> None:
    """The run is about to create its vector tables (of ``version.vector_type``): from here on a
    failure drops them (said before they exist, so that no table is ever left unrecorded)."""
    version.has_tables = True
    ModelVersion.objects.filter(pk=version.pk).update(has_tables=True, vector_type=version.vector_type)


def run_finish(version: ModelVersion) -> None:
    """Save a run's results as ``ready``; only a run that still holds its claim may finish (one
    declared dead meanwhile stays failed)."""
    with transaction.atomic():
        status = ModelVersion.objects.select_for_update().values_list("status", flat=True).get(pk=version.pk)
        if status != Status.TRAINING:
            raise RuntimeError(f"version {version.pk} lost its claim while training")
        version.status = Status.READY
        version.finished_at = timezone.now()
        version.lease_expires_at = None
        # In the same write as ``ready``: a run that stops short of being judged is found by it.
        version.progress = {**version.progress, "stage": CONCLUDING}
        version.save()


def _heartbeat_lease() -> Any:
    return timezone.now() + timedelta(seconds=settings.RECSYS_TRAIN_HEARTBEAT_SECONDS)


@contextmanager
def _heartbeat(version_id: int) -> Iterator[None]:
    """Renew the run's lease from a thread while it works: a long stage never looks dead, and a
    worker killed with -9 stops renewing, so its lease runs out within RECSYS_TRAIN_HEARTBEAT_SECONDS."""
    stop = threading.Event()
    interval = settings.RECSYS_TRAIN_HEARTBEAT_SECONDS / HEARTBEATS_PER_LEASE

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    ModelVersion.objects.filter(pk=version_id, status=Status.TRAINING).update(
                        lease_expires_at=_heartbeat_lease()
                    )
                except (DatabaseError, InterfaceError):
                    # PostgreSQL away for a moment (restarted, failed over): beat again on a new
                    # connection. A thread that stopped here would let a healthy run be reaped.
                    logger.warning("heartbeat of version %s missed: database unavailable", version_id)
                    connection.close()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-v{version_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


# ---- failure and the reaper -----------------------------------------------------------------------


def runs_reap(*, kind: str | None = None, now: datetime | None = None) -> list[int]:
    """Mark failed the runs whose lease ran out by ``now`` (default: the present): a started one lost its
    worker (no heartbeat), a waiting one was never taken from the queue. Returns their ids; beat calls it
    every few seconds."""
    expired = ModelVersion.objects.filter(status=Status.TRAINING, lease_expires_at__lte=now or timezone.now())
    if kind is not None:
        expired = expired.filter(kind=kind)
    reaped = []
    for version in expired:
        if version.started_at is None:
            error = RuntimeError(
                f"its lease ran out: no worker took the run from the training queue within "
                f"{settings.RECSYS_TRAIN_LEASE_SECONDS} s"
            )
        else:
            error = RuntimeError(
                f"its lease ran out at {version.lease_expires_at:%H:%M:%S} UTC: the worker stopped sending "
                "heartbeats (killed or crashed)"
            )
        if _fail(version, error, only_if_expired=True):
            logger.warning("%s version %s failed: %s", version.kind, version.pk, error)
            reaped.append(version.pk)
    return reaped


def _fail_once_reachable(version: ModelVersion, error: Exception) -> None:
    """`_fail`, tried again while the database is unreachable (a run that PostgreSQL's going away
    broke is marked failed as soon as it returns, so that the next claim need not wait for the
    reaper); after a heartbeat lease it is left to the reaper, which fails it once its lease runs out."""
    deadline = time.monotonic() + settings.RECSYS_TRAIN_HEARTBEAT_SECONDS
    while True:
        try:
            _fail(version, error)
            return
        except (DatabaseError, InterfaceError):
            if time.monotonic() >= deadline:
                logger.warning("version %s could not be marked failed; the reaper will do it", version.pk)
                return
            connection.close()  # a broken connection is not reused: the next try connects anew
            time.sleep(1)


def _fail(version: ModelVersion, error: Exception, *, only_if_expired: bool = False) -> bool:
    """Mark a run failed and drop its tables; ``only_if_expired``: unless its lease was renewed meanwhile."""
    rows = ModelVersion.objects.filter(pk=version.pk)
    if only_if_expired:
        rows = rows.filter(status=Status.TRAINING, lease_expires_at__lte=timezone.now())
    failed = rows.update(
        status=Status.FAILED,
        progress={**version.progress, "stage": "failed"},
        error=f"{type(error).__name__}: {error}"[:2000],
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if failed and ModelVersion.objects.filter(pk=version.pk, has_tables=True).exists():
        _tables_drop(version.pk)  # busy: the beat's tidying drops them later
    return bool(failed)


def _tables_drop(version_id: int, **fields: Any) -> bool:
    """Drop a version's tables and save ``fields`` with ``has_tables=False`` in one transaction;
    False (nothing changed) when the tables are in use (tables.TablesBusy)."""
    try:
        with transaction.atomic():  # the tables and the flag that says they exist go together
            tables.tables_drop(version_id)
            ModelVersion.objects.filter(pk=version_id).update(has_tables=False, **fields)
    except tables.TablesBusy as busy:
        logger.warning("%s", busy)
        return False
    return True


# ---- activation and pruning -----------------------------------------------------------------------


def model_version_activate_if_better(*, version_id: int) -> ModelVersion:
    """Activate a ready version unless what it would serve (``served_quality``) falls short, by more
    than RECSYS_QUALITY_MARGIN, of what the active version serves or of popularity on the version's
    own validation split (``baseline_metrics``): with no collaborative version, users get the
    popular and content-profile paths, so a version whose index cannot find its own top 10 (0.0 at
    10M generated interactions before its rank was cut: BENCHMARKS.md, scale-10m) is not served
    even as the first one."""
    version = ModelVersion.objects.get(pk=version_id)
    current = ActiveVersion.objects.select_related("version").filter(kind=version.kind).first()
    floors = {"popularity on its validation split": float(version.baseline_metrics.get("ndcg@10", 0.0))}
    if current is not None:
        floors[f"active version {current.version_id}"] = served_quality(current.version)
    serves = served_quality(version)
    for name, quality in floors.items():
        if serves < quality * (1 - settings.RECSYS_QUALITY_MARGIN):
            logger.warning(
                "version %s stays ready: it serves ndcg@10 %.4f (ndcg@10 %.4f at ANN recall@10 %.4f), "
                "below %s's %.4f by more than the margin",
                version.pk,
                serves,
                version.metrics.get("ndcg@10", 0.0),
                version.metrics.get("ann_recall@10", 1.0),
                name,
                quality,
            )
            _concluded(version)
            return version
    return model_version_activate(version_id=version_id)


def served_quality(version: ModelVersion) -> float:
    """A version's validation NDCG@10 as its index serves it: times its ANN recall@10 (1 where not
    measured), each top-10 slot the index misses counted as losing an average slot's share. On
    ml-latest-small a missed slot cost about that much NDCG@10 (BENCHMARKS.md, quality); a version
    whose index cannot find its own top 10 (recall@10 0.70 at 10M generated interactions:
    BENCHMARKS.md, scale-10m) does not replace one that serves what it scores."""
    return served_ndcg(version.metrics)


def served_ndcg(metrics: dict[str, float]) -> float:
    """``served_quality`` of a version's metrics: NDCG@10 × ANN recall@10 (1 where not measured)."""
    return float(metrics.get("ndcg@10", 0.0)) * float(metrics.get("ann_recall@10", 1.0))


def model_version_activate(*, version_id: int) -> ModelVersion:
    """Point serving at a complete version in one transaction (rollback = activate an older one)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().filter(pk=version_id).first()
        if version is None:
            raise NotFound(f"model version {version_id} does not exist")
        if version.status not in {Status.READY, Status.ACTIVE, Status.RETIRED} or not version.has_tables:
            raise ModelVersionNotReady(f"version {version.pk} is {version.status} and cannot be served")
        previous = ActiveVersion.objects.select_for_update().filter(kind=version.kind).first()
        if previous and previous.version_id != version.pk:
            ModelVersion.objects.filter(pk=previous.version_id).update(
                status=Status.READY, deactivated_at=timezone.now()
            )
            # (one served is judged, whoever activated it: back to ready it is not sent again)
            _concluded(ModelVersion.objects.get(pk=previous.version_id))
        ActiveVersion.objects.update_or_create(kind=version.kind, defaults={"version": version})
        version.status = Status.ACTIVE
        version.save(update_fields=["status"])
        _concluded(version)
        transaction.on_commit(_serving_changed)
        transaction.on_commit(lambda: embedding_map_on_activation(version_id=version.pk))
    _serving_changed()
    model_versions_prune(kind=version.kind, keep=settings.RECSYS_KEEP_VERSIONS)
    return version


def _serving_changed() -> None:
    """Serving moved to another version: this process re-reads the pointer, cached answers go stale."""
    active_version_serving_forget()
    answers_invalidate_all()


# Other apps name the versions they still serve (experiments: their variants' versions); pruning
# keeps those tables. A list of callables so that this module imports nothing above it.
prune_guards: list[Callable[[], set[int]]] = []


def model_versions_prune(*, kind: str, keep: int, now: datetime | None = None) -> list[int]:
    """Drop the vector tables of all but the newest ``keep`` servable versions: never the active
    one, one that a guard in ``prune_guards`` names, or one that served within
    RECSYS_PRUNE_GRACE_SECONDS (other processes may still read it); tables in use are left for the
    next try (the beat tidies every few seconds). Each drop re-checks under the version's row lock
    and then the pointer's, in activation's order, so that a version activated meanwhile (a
    rollback) is never dropped."""
    recent = (now or timezone.now()) - timedelta(seconds=settings.RECSYS_PRUNE_GRACE_SECONDS)
    pruned = []
    for version_id, _ in prune_candidates(kind=kind, keep=keep):
        try:
            with transaction.atomic():
                # NOWAIT: an activation holds the pointer and then locks the version it replaces; waiting
                # here while holding that version's row would deadlock with it. Busy: the next tidy.
                version = (
                    ModelVersion.objects.select_for_update(nowait=True).filter(pk=version_id, has_tables=True).first()
                )
                active = ActiveVersion.objects.select_for_update(nowait=True).filter(kind=kind).first()
                kept = {active.version_id if active else None}.union(*(guard() for guard in prune_guards))
                if version is None or version.pk in kept or (version.deactivated_at or recent) > recent:
                    continue
                if not _tables_drop(version.pk, status=Status.RETIRED):
                    continue
        except DatabaseError as error:
            if not lock_not_available(error):
                raise
            logger.info("version %s is being activated or pruned elsewhere; the next tidy looks again", version_id)
            continue
        pruned.append(version_id)
    return pruned


def prune_candidates(*, kind: str, keep: int) -> list[tuple[int, datetime | None]]:
    """(id, deactivated_at) of the servable versions past the newest ``keep``, the active one left
    out, newest first: what ``model_versions_prune`` may drop, guards and grace permitting."""
    servable = ModelVersion.objects.filter(kind=kind, has_tables=True).exclude(status=Status.TRAINING)
    active = ActiveVersion.objects.filter(kind=kind).values_list("version_id", flat=True).first()
    older = servable.order_by("-id").values_list("pk", "deactivated_at")[keep:]
    return [(pk, deactivated) for pk, deactivated in older if pk != active]


def versions_tidy() -> list[int]:
    """Beat: prune every kind (versions whose grace has passed since they served; drops that found
    their tables busy), and drop what failed runs left (their drop found the tables busy)."""
    dropped = []
    for kind in Kind.values:
        dropped += model_versions_prune(kind=kind, keep=settings.RECSYS_KEEP_VERSIONS)
    for version_id in ModelVersion.objects.filter(status=Status.FAILED, has_tables=True).values_list("pk", flat=True):
        if _tables_drop(version_id):
            dropped.append(version_id)
    return dropped
