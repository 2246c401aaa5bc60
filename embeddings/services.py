"""Collaborative training: read interactions, learn, evaluate, store a version (the run lifecycle is ``runs``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from django.conf import settings
from django.db import connection

from embeddings import runs
from embeddings.cold_placement import cold_items_place, content_map_learn
from embeddings.evaluation import Split, popularity_recommender, ranking_metrics, scores_recommender
from embeddings.interactions import InteractionMatrix, build_matrix, decay, events_from_binary_copy, latest_times
from embeddings.learners import Factors, LearnerParams, fit, gram_matrix
from embeddings.models import Kind, ModelVersion, Status, VersionArtifacts
from embeddings.popularity import popularity_refresh
from embeddings.ranking.training import ranking_stage_learn
from embeddings.tuning import TuningSettings, collaborative_search, learner_confidences, validation_split
from embeddings.vectors import tables

logger = logging.getLogger(__name__)

# Binary: fixed-width rows parsed by numpy (embeddings.interactions.events_from_binary_copy), no
# text round trip and no Python object per row; each chunk of a million rows is decoded in one
# np.frombuffer (~0.1 s), so the run's heartbeat thread never waits long for the GIL.
_INTERACTIONS_COPY = (
    "COPY (SELECT user_id, item_id, weight, timestamp FROM recsys_interaction) TO STDOUT (FORMAT BINARY)"
)


def learner_params_from_settings(**overrides: Any) -> LearnerParams:
    defaults = {
        "algorithm": settings.RECSYS_CF_ALGORITHM,
        "factors": settings.RECSYS_CF_FACTORS,
        "regularization": settings.RECSYS_CF_REGULARIZATION,
        "iterations": settings.RECSYS_CF_ITERATIONS,
        "alpha": settings.RECSYS_CF_ALPHA,
        "bm25": settings.RECSYS_CF_BM25,
    }
    return LearnerParams(**{**defaults, **overrides})


def interactions_load(*, half_life_days: float | None, now: float | None = None) -> InteractionMatrix:
    """All interactions as a weighted CSR matrix, streamed with one binary COPY into numpy columns."""
    return interactions_load_timed(half_life_days=half_life_days, now=now)[0]


def interactions_load_timed(
    *, half_life_days: float | None, now: float | None = None
) -> tuple[InteractionMatrix, sp.csr_matrix]:
    """The weighted matrix and, over the same rows and columns, each pair's latest event time."""
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(_INTERACTIONS_COPY) as copy:
        events = events_from_binary_copy(bytes(block) for block in copy)
    weights = events.weights * decay(events.timestamps, now=now or time.time(), half_life_days=half_life_days)
    data = build_matrix(events.user_ids, events.item_ids, weights)
    return data, latest_times(data, events.user_ids, events.item_ids, events.timestamps)


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
    if settings.RECSYS_COLD_ITEMS and version.status == Status.ACTIVE:
        cold_items_place()  # items with text the new version has no interactions for
    return version


def _train(version: ModelVersion) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data, times = interactions_load_timed(half_life_days=settings.RECSYS_CF_HALF_LIFE_DAYS)
    timings["load"] = time.perf_counter() - started
    if data.matrix.nnz == 0:
        raise ValueError("there are no interactions to learn from")
    runs.run_progress(version, stage="evaluating", users=data.shape[0], items=data.shape[1])
    started = time.perf_counter()
    selection = _select(
        data.matrix,
        LearnerParams(**version.params),
        lambda **candidate: runs.run_progress(
            version, stage="evaluating", users=data.shape[0], items=data.shape[1], **candidate
        ),
    )
    params, version.metrics, version.baseline_metrics, tried = (
        selection.params,
        selection.metrics,
        selection.baseline,
        selection.tried,
    )
    timings["evaluate"] = time.perf_counter() - started
    artifacts = VersionArtifacts(version=version)
    if settings.RECSYS_RANKING:
        runs.run_progress(version, stage="ranking", candidates=tried)
        outcome, state, timings["ranking"] = ranking_stage_learn(
            split=selection.split,
            user_scores=lambda row: selection.factors.scores(np.array([row]))[0],
            data=data,
            times=times,
            seed=params.random_state,
        )
        artifacts.ranking, artifacts.ranking_used = outcome.report, outcome.wins
        artifacts.ranker = outcome.ranker.model_text() if outcome.ranker is not None else ""
        artifacts.ranking_state = state.to_bytes() if outcome.ranker is not None else None
        version.metrics["ranking_ndcg@10"] = outcome.report["ndcg@10"]
        version.metrics["best_source_ndcg@10"] = outcome.report["best_source_ndcg@10"]
    version.algorithm, version.params = params.algorithm, params.as_dict()
    runs.run_progress(version, stage="fitting", candidates=tried)
    started = time.perf_counter()
    factors = fit(_confidences(data.matrix, params), params)
    timings["fit"] = time.perf_counter() - started
    runs.run_progress(version, stage="storing")
    started = time.perf_counter()
    _store(version, data, factors)
    timings["store"] = time.perf_counter() - started
    if settings.RECSYS_COLD_ITEMS:
        started = time.perf_counter()
        learned = content_map_learn(
            item_ids=data.item_ids, item_vectors=factors.item, fold_in=factors.item_in, seed=params.random_state
        )
        if learned is not None:
            artifacts.content_version, artifacts.content_map, report = learned
            version.metrics["content_map_r2"] = report["r2"]
        timings["content_map"] = time.perf_counter() - started
    artifacts.save()
    version.dimensions = factors.dimensions
    version.item_gram = None if factors.item_in is not None else gram_matrix(factors.item).tolist()
    version.counts = {"users": data.shape[0], "items": data.shape[1], "interactions": int(data.matrix.nnz)}
    version.timings = {k: round(v, 3) for k, v in timings.items()}
    runs.run_finish(version)


def _confidences(matrix: Any, params: LearnerParams) -> Any:
    """The matrix the chosen learner fits on (BM25 when the search picked it); EASE reads the summed
    weights, which is also what its fold-in sums, so its users fold in exactly."""
    return learner_confidences(matrix, params) if params.algorithm != "ease" else matrix


def tuning_settings(configured: LearnerParams, n_items: int) -> TuningSettings:
    """The search's budget and starting points from the settings (``RECSYS_CF_TUNE*``)."""
    return TuningSettings(
        budget_seconds=settings.RECSYS_CF_TUNE_BUDGET_SECONDS,
        max_evals=settings.RECSYS_CF_TUNE_MAX_EVALS,
        eval_users=settings.RECSYS_CF_TUNE_EVAL_USERS,
        ease=n_items <= settings.RECSYS_EASE_MAX_ITEMS,
        ease_factors=settings.RECSYS_EASE_FACTORS,
        ease_lambda_start=settings.RECSYS_EASE_LAMBDA,
        als_regularization_start=configured.regularization,
        seed=configured.random_state,
    )


@dataclass
class Selection:
    """The chosen learner, its metrics and popularity's on the validation split, every candidate's
    score, and the split with the chosen learner fitted on its train part (the ranking stage's input)."""

    params: LearnerParams
    metrics: dict[str, float]
    baseline: dict[str, float]
    tried: list[dict[str, Any]]
    split: Split
    factors: Factors


def _select(matrix: Any, configured: LearnerParams, report: Callable[..., None] = lambda **_: None) -> Selection:
    """Search the learners' parameters on a per-user 80/20 split (``embeddings.tuning``), or take
    the configured learner as it is when tuning is off."""
    split = validation_split(matrix, seed=configured.random_state)
    evaluate = {"max_users": settings.RECSYS_EVAL_MAX_USERS, "seed": configured.random_state}
    baseline = ranking_metrics(popularity_recommender(split.train), split, **evaluate)
    if settings.RECSYS_CF_TUNE:
        outcome = collaborative_search(
            split, configured, options=tuning_settings(configured, matrix.shape[1]), report=report
        )
        params, tried = outcome.params, outcome.tried
    else:
        params, tried = configured, []
    factors = fit(_confidences(split.train, params), params)
    metrics = ranking_metrics(scores_recommender(factors.scores, split.train), split, **evaluate)
    if not tried:
        tried = [{"algorithm": params.algorithm, "ndcg@10": round(metrics["ndcg@10"], 5)}]
    return Selection(params, metrics, baseline, tried, split, factors)


def _store(version: ModelVersion, data: InteractionMatrix, factors: Factors) -> None:
    tables.tables_create(version.pk, factors.dimensions)
    runs.run_tables_created(version)
    tables.vectors_copy(version.pk, "item", data.item_ids, factors.item, fold_in=factors.item_in)
    tables.vectors_copy(version.pk, "user", data.user_ids, factors.user)
    tables.index_build(version.pk, "item")
