"""Training orchestration: read interactions, learn, evaluate, store a version, switch serving."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from embeddings import vector_store
from embeddings.answer_cache import answers_invalidate_all
from embeddings.evaluation import holdout_split, popularity_recommender, ranking_metrics, scores_recommender
from embeddings.interactions import InteractionMatrix, bm25_confidence, build_matrix, decay
from embeddings.learners import Factors, LearnerParams, Svd, fit, gram_matrix
from embeddings.maps import embedding_map_on_activation
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from embeddings.popularity import popularity_refresh
from embeddings.selectors import active_version_serving_forget
from recsys.errors import Conflict, ModelNotReady, NotFound, ServiceUnavailable

logger = logging.getLogger(__name__)

_INTERACTIONS_COPY = (
    "COPY (SELECT user_id, item_id, weight, extract(epoch FROM timestamp) FROM recsys_interaction) TO STDOUT"
)


class TrainingAlreadyRunning(Conflict):
    """Another run of the same kind holds an unexpired lease."""


class ModelVersionNotReady(ModelNotReady):
    """The version cannot be served (failed, still training, or its vectors are gone)."""


def learner_params_from_settings(**overrides: Any) -> LearnerParams:
    defaults = {
        "algorithm": settings.RECSYS_CF_ALGORITHM,
        "factors": settings.RECSYS_CF_FACTORS,
        "regularization": settings.RECSYS_CF_REGULARIZATION,
        "iterations": settings.RECSYS_CF_ITERATIONS,
        "alpha": settings.RECSYS_CF_ALPHA,
    }
    return LearnerParams(**{**defaults, **overrides})


def interactions_load(*, half_life_days: float | None, now: float | None = None) -> InteractionMatrix:
    """All interactions as a weighted CSR matrix, read with one COPY (no ORM objects)."""
    buffer = io.BytesIO()
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(_INTERACTIONS_COPY) as copy:
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    if buffer.getbuffer().nbytes == 0:
        empty = np.zeros(0)
        return build_matrix(empty.astype(np.int64), empty.astype(np.int64), empty.astype(np.float32))
    table = np.loadtxt(buffer, delimiter="\t", dtype=np.float64, ndmin=2)
    weights = table[:, 2].astype(np.float32) * decay(table[:, 3], now=now or time.time(), half_life_days=half_life_days)
    return build_matrix(table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), weights)


def collaborative_version_create(*, params: LearnerParams | None = None) -> ModelVersion:
    """Claim a collaborative training run (refused while another one's lease is live)."""
    params = params or learner_params_from_settings()
    return _version_claim(Kind.COLLABORATIVE, params.algorithm, params.as_dict())


def content_version_create(*, config: dict[str, Any] | None = None) -> ModelVersion:
    """Claim a content build with the configured encoder (refused while another build runs)."""
    from embeddings.content import content_encoder_config

    config = config or content_encoder_config()
    return _version_claim(Kind.CONTENT, config["encoder"], config)


def _version_claim(kind: str, algorithm: str, params: dict[str, Any]) -> ModelVersion:
    with transaction.atomic():
        # A transaction-scoped advisory lock per kind serialises concurrent claims (it works
        # before any version exists, unlike a row lock).
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"recsys:train:{kind}"])
        _abandoned_runs_fail(kind)
        running = ModelVersion.objects.filter(
            kind=kind, status=Status.TRAINING, lease_expires_at__gt=timezone.now()
        ).first()
        if running:
            raise TrainingAlreadyRunning(f"version {running.pk} is training until {running.lease_expires_at}")
        return ModelVersion.objects.create(
            kind=kind,
            algorithm=algorithm,
            params=params,
            lease_expires_at=timezone.now() + timedelta(seconds=settings.RECSYS_TRAIN_LEASE_SECONDS),
        )


@contextmanager
def _lease_heartbeat(version_id: int) -> Iterator[None]:
    """Renew the run's lease from a thread while it trains: a long fit never looks abandoned,
    and a worker killed with -9 stops renewing, so its lease expires."""
    stop = threading.Event()
    interval = max(1.0, settings.RECSYS_TRAIN_LEASE_SECONDS / 3)

    def renew() -> None:
        try:
            while not stop.wait(interval):
                ModelVersion.objects.filter(pk=version_id, status=Status.TRAINING).update(
                    lease_expires_at=timezone.now() + timedelta(seconds=settings.RECSYS_TRAIN_LEASE_SECONDS)
                )
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=renew, name=f"lease-v{version_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _abandoned_runs_fail(kind: str) -> None:
    """Runs whose lease expired lost their worker (killed, out of memory): mark them failed."""
    abandoned = ModelVersion.objects.filter(kind=kind, status=Status.TRAINING, lease_expires_at__lte=timezone.now())
    for version in abandoned:
        _fail(version, RuntimeError("the worker stopped renewing its lease (killed or crashed)"))


def training_enqueue(*, version_id: int) -> str:
    """Send a claimed run (either kind) to the training queue; if the broker is away the claim is released."""
    from embeddings import tasks

    task_id = str(uuid.uuid4())
    ModelVersion.objects.filter(pk=version_id).update(task_id=task_id)
    kind = ModelVersion.objects.values_list("kind", flat=True).get(pk=version_id)
    task = tasks.collaborative_model_train if kind == Kind.COLLABORATIVE else tasks.content_model_build
    try:
        task.apply_async((version_id,), task_id=task_id)
    except Exception as error:  # kombu raises several connection error types
        _fail(ModelVersion.objects.get(pk=version_id), error)
        raise ServiceUnavailable("the task queue (Redis) is unavailable; retry shortly") from error
    return task_id


def claimed_run(version_id: int, work: Callable[[ModelVersion], None]) -> ModelVersion | None:
    """Run ``work`` on a claimed version under its lease; on any failure the version is marked
    failed (its tables dropped) and serving is untouched. None: a retry of a finished run."""
    version = ModelVersion.objects.get(pk=version_id)
    if version.status != Status.TRAINING:
        return None
    version.started_at = timezone.now()
    version.save(update_fields=["started_at"])
    try:
        with _lease_heartbeat(version.pk):
            work(version)
    except Exception as error:
        logger.exception("%s version %s failed", version.kind, version.pk)
        _fail(version, error)
        raise
    ModelVersion.objects.filter(pk=version.pk).update(progress={**version.progress, "stage": "done"})
    return version


def collaborative_model_train(*, version_id: int) -> ModelVersion:
    """Run a claimed version end to end; on any failure it is marked failed and serving is untouched."""
    if claimed_run(version_id, _train) is None:
        return ModelVersion.objects.get(pk=version_id)  # a retry of a run that already finished
    version = model_version_activate_if_better(version_id=version_id)
    # Popular items answer cold users next to this model: rescore them from the same data now
    # rather than wait for beat (seconds, against minutes of training).
    popularity_refresh()
    return version


def _train(version: ModelVersion) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = interactions_load(half_life_days=settings.RECSYS_CF_HALF_LIFE_DAYS)
    timings["load"] = time.perf_counter() - started
    if data.matrix.nnz == 0:
        raise ValueError("there are no interactions to learn from")
    _progress(version, stage="evaluating", users=data.shape[0], items=data.shape[1])
    started = time.perf_counter()
    params, version.metrics, version.baseline_metrics, tried = _select(
        data.matrix,
        LearnerParams(**version.params),
        lambda **candidate: _progress(
            version, stage="evaluating", users=data.shape[0], items=data.shape[1], **candidate
        ),
    )
    timings["evaluate"] = time.perf_counter() - started
    version.algorithm, version.params = params.algorithm, params.as_dict()
    _progress(version, stage="fitting", candidates=tried)
    started = time.perf_counter()
    factors = fit(_confidences(data.matrix, params), params)
    timings["fit"] = time.perf_counter() - started
    _progress(version, stage="storing")
    started = time.perf_counter()
    _store(version, data, factors)
    timings["store"] = time.perf_counter() - started
    version.dimensions = factors.dimensions
    version.item_gram = None if factors.item_in is not None else gram_matrix(factors.item).tolist()
    version.counts = {"users": data.shape[0], "items": data.shape[1], "interactions": int(data.matrix.nnz)}
    version.timings = {k: round(v, 3) for k, v in timings.items()}
    version.status = Status.READY
    version.finished_at = timezone.now()
    version.lease_expires_at = None
    # Only a run that still holds its claim may finish: one declared abandoned stays failed.
    if not ModelVersion.objects.filter(pk=version.pk, status=Status.TRAINING).exists():
        raise RuntimeError(f"version {version.pk} lost its claim while training")
    version.save()


def _confidences(matrix: Any, params: LearnerParams) -> Any:
    """BM25 re-weighting for the implicit learners when enabled; EASE reads the summed weights,
    which is also what its fold-in sums, so its users fold in exactly."""
    return bm25_confidence(matrix) if settings.RECSYS_CF_BM25 and params.algorithm != "ease" else matrix


def tuning_candidates(configured: LearnerParams, n_items: int) -> list[LearnerParams]:
    """The configured learner, plus low-rank EASE for catalogues it handles well, when tuning is on."""
    candidates = [configured]
    if settings.RECSYS_CF_TUNE and n_items <= settings.RECSYS_EASE_MAX_ITEMS:
        for regularization in settings.RECSYS_EASE_REGULARIZATION:
            candidates.append(
                LearnerParams(
                    algorithm="ease",
                    factors=settings.RECSYS_EASE_FACTORS,
                    regularization=regularization,
                    random_state=configured.random_state,
                )
            )
    return candidates


def _select(
    matrix: Any, configured: LearnerParams, report: Callable[..., None] = lambda **_: None
) -> tuple[LearnerParams, dict[str, float], dict[str, float], list[dict[str, Any]]]:
    """Fit each candidate on a per-user 80/20 split and keep the best by NDCG@10.

    Returns the winner, its metrics, popularity's metrics on the same split, and every
    candidate's score (so operators can see what was tried).
    """
    split = holdout_split(matrix, test_fraction=0.2, seed=configured.random_state)
    evaluate = {"max_users": settings.RECSYS_EVAL_MAX_USERS, "seed": configured.random_state}
    baseline = ranking_metrics(popularity_recommender(split.train), split, **evaluate)
    best: tuple[LearnerParams, dict[str, float]] | None = None
    tried: list[dict[str, Any]] = []
    svd_cache: dict[int, Svd] = {}
    candidates = tuning_candidates(configured, matrix.shape[1])
    for number, params in enumerate(candidates, start=1):
        report(candidate=number, of=len(candidates), algorithm=params.algorithm, tried=list(tried))
        factors = fit(_confidences(split.train, params), params, svd_cache=svd_cache)
        metrics = ranking_metrics(scores_recommender(factors.scores, split.train), split, **evaluate)
        tried.append(
            {
                "algorithm": params.algorithm,
                "factors": params.factors,
                "regularization": params.regularization,
                "ndcg@10": round(metrics["ndcg@10"], 5),
            }
        )
        if best is None or metrics["ndcg@10"] > best[1]["ndcg@10"]:
            best = (params, metrics)
    assert best is not None
    return best[0], best[1], baseline, tried


def _store(version: ModelVersion, data: InteractionMatrix, factors: Factors) -> None:
    vector_store.tables_create(version.pk, factors.dimensions)
    version.has_tables = True
    version.save(update_fields=["has_tables"])
    vector_store.vectors_copy(version.pk, "item", data.item_ids, factors.item, fold_in=factors.item_in)
    vector_store.vectors_copy(version.pk, "user", data.user_ids, factors.user)
    vector_store.index_build(version.pk, "item")


def _progress(version: ModelVersion, **progress: Any) -> None:
    version.progress = {**version.progress, **progress}
    version.lease_expires_at = timezone.now() + timedelta(seconds=settings.RECSYS_TRAIN_LEASE_SECONDS)
    version.save(update_fields=["progress", "lease_expires_at"])


def _fail(version: ModelVersion, error: Exception) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(
        status=Status.FAILED,
        progress={**version.progress, "stage": "failed"},
        error=f"{type(error).__name__}: {error}"[:2000],
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if version.has_tables:
        vector_store.tables_drop(version.pk)
        ModelVersion.objects.filter(pk=version.pk).update(has_tables=False)


def model_version_activate_if_better(*, version_id: int) -> ModelVersion:
    """Activate a ready version unless its NDCG@10 falls short of the active one's by the margin."""
    version = ModelVersion.objects.get(pk=version_id)
    current = ActiveVersion.objects.select_related("version").filter(kind=version.kind).first()
    if current is not None:
        floor = current.version.metrics.get("ndcg@10", 0.0) * (1 - settings.RECSYS_QUALITY_MARGIN)
        if version.metrics.get("ndcg@10", 0.0) < floor:
            logger.warning(
                "version %s stays ready: ndcg@10 %.4f below %.4f",
                version.pk,
                version.metrics.get("ndcg@10", 0.0),
                floor,
            )
            return version
    return model_version_activate(version_id=version_id)


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
            ModelVersion.objects.filter(pk=previous.version_id).update(status=Status.READY)
        ActiveVersion.objects.update_or_create(kind=version.kind, defaults={"version": version})
        version.status = Status.ACTIVE
        version.save(update_fields=["status"])
        transaction.on_commit(_serving_changed)
        transaction.on_commit(lambda: embedding_map_on_activation(version_id=version.pk))
    _serving_changed()
    model_versions_prune(kind=version.kind, keep=settings.RECSYS_KEEP_VERSIONS)
    return version


def _serving_changed() -> None:
    """Serving moved to another version: this process re-reads the pointer, cached answers go stale."""
    active_version_serving_forget()
    answers_invalidate_all()


def model_versions_prune(*, kind: str, keep: int) -> list[int]:
    """Drop the vector tables of all but the newest ``keep`` servable versions (never the active one)."""
    servable = ModelVersion.objects.filter(kind=kind, has_tables=True).exclude(status=Status.TRAINING)
    active = ActiveVersion.objects.filter(kind=kind).values_list("version_id", flat=True).first()
    pruned = []
    for version in servable.order_by("-id")[keep:]:
        if version.pk == active:
            continue
        vector_store.tables_drop(version.pk)
        ModelVersion.objects.filter(pk=version.pk).update(has_tables=False, status=Status.RETIRED)
        pruned.append(version.pk)
    return pruned
