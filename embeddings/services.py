"""Collaborative training: read interactions, learn, evaluate, store a version (the run lifecycle is ``runs``)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection

from embeddings import runs
from embeddings.evaluation import holdout_split, popularity_recommender, ranking_metrics, scores_recommender
from embeddings.interactions import InteractionMatrix, bm25_confidence, build_matrix, decay
from embeddings.learners import Factors, LearnerParams, Svd, fit, gram_matrix
from embeddings.models import Kind, ModelVersion
from embeddings.popularity import popularity_refresh
from embeddings.vectors import tables

logger = logging.getLogger(__name__)

# numpy's loadtxt holds the GIL for a whole parse (11.6 s for 2M rows on this busy 2-core
# machine), which would starve the run's heartbeat thread; parsed 4 MB (~140k rows) at a time,
# the longest the heartbeat waited for the GIL over the same 2M rows was 1.5 s.
PARSE_CHUNK_BYTES = 4 << 20
_INTERACTIONS_COPY = (
    "COPY (SELECT user_id, item_id, weight, extract(epoch FROM timestamp) FROM recsys_interaction) TO STDOUT"
)


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
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(_INTERACTIONS_COPY) as copy:
        parts = [np.loadtxt(io.BytesIO(rows), delimiter="\t", dtype=np.float64, ndmin=2) for rows in _line_chunks(copy)]
    if not parts:
        empty = np.zeros(0)
        return build_matrix(empty.astype(np.int64), empty.astype(np.int64), empty.astype(np.float32))
    table = np.concatenate(parts)
    del parts
    weights = table[:, 2].astype(np.float32) * decay(table[:, 3], now=now or time.time(), half_life_days=half_life_days)
    return build_matrix(table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), weights)


def _line_chunks(blocks: Iterable[Any]) -> Iterator[bytes]:
    """COPY's blocks regrouped into chunks of whole lines of about PARSE_CHUNK_BYTES each."""
    pending: list[bytes] = []
    size = 0
    for block in blocks:
        pending.append(bytes(block))
        size += len(block)
        if size >= PARSE_CHUNK_BYTES:
            head, _, tail = b"".join(pending).rpartition(b"\n")
            pending, size = [tail], len(tail)
            if head:
                yield head
    rest = b"".join(pending)
    if rest.strip():
        yield rest


def collaborative_version_create(*, params: LearnerParams | None = None) -> ModelVersion:
    """Claim a collaborative training run (refused while another one's lease is live)."""
    params = params or learner_params_from_settings()
    return runs.run_claim(kind=Kind.COLLABORATIVE, algorithm=params.algorithm, params=params.as_dict())


def collaborative_model_train(*, version_id: int) -> ModelVersion:
    """Run a claimed version end to end; on any failure it is marked failed and serving is untouched."""
    if runs.run_execute(version_id=version_id, work=_train) is None:
        return ModelVersion.objects.get(pk=version_id)  # a retry of a run that already finished
    version = runs.model_version_activate_if_better(version_id=version_id)
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
    runs.run_progress(version, stage="evaluating", users=data.shape[0], items=data.shape[1])
    started = time.perf_counter()
    params, version.metrics, version.baseline_metrics, tried = _select(
        data.matrix,
        LearnerParams(**version.params),
        lambda **candidate: runs.run_progress(
            version, stage="evaluating", users=data.shape[0], items=data.shape[1], **candidate
        ),
    )
    timings["evaluate"] = time.perf_counter() - started
    version.algorithm, version.params = params.algorithm, params.as_dict()
    runs.run_progress(version, stage="fitting", candidates=tried)
    started = time.perf_counter()
    factors = fit(_confidences(data.matrix, params), params)
    timings["fit"] = time.perf_counter() - started
    runs.run_progress(version, stage="storing")
    started = time.perf_counter()
    _store(version, data, factors)
    timings["store"] = time.perf_counter() - started
    version.dimensions = factors.dimensions
    version.item_gram = None if factors.item_in is not None else gram_matrix(factors.item).tolist()
    version.counts = {"users": data.shape[0], "items": data.shape[1], "interactions": int(data.matrix.nnz)}
    version.timings = {k: round(v, 3) for k, v in timings.items()}
    runs.run_finish(version)


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
    tables.tables_create(version.pk, factors.dimensions)
    runs.run_tables_created(version)
    tables.vectors_copy(version.pk, "item", data.item_ids, factors.item, fold_in=factors.item_in)
    tables.vectors_copy(version.pk, "user", data.user_ids, factors.user)
    tables.index_build(version.pk, "item")
