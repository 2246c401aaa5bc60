"""Collaborative training: read interactions, learn, evaluate, store a version (the run lifecycle is ``runs``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import numpy as np
import scipy.sparse as sp
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from embeddings import runs
from embeddings.ann_tuning import version_ef_search_tune
from embeddings.cold_placement import cold_items_place, content_map_learn
from embeddings.evaluation import Split, popularity_recommender, ranking_metrics, scores_recommender
from embeddings.interactions import (
    InteractionMatrix,
    build_matrix,
    decay,
    events_from_array_copy,
    latest_times,
    weak_negatives_build,
    with_weak_negatives,
)
from embeddings.learners import Factors, LearnerParams, Svd, cuda_available, fit, gram_matrix
from embeddings.models import Kind, ModelVersion, Status, VersionArtifacts
from embeddings.popularity import popularity_refresh
from embeddings.ranking.training import ranking_stage_learn
from embeddings.tuning import (
    EASE_MIN_SERVING_FACTORS,
    TuningOutcome,
    TuningSettings,
    collaborative_search,
    learner_confidences,
    learner_weights,
    validation_split,
)
from embeddings.vectors import tables

logger = logging.getLogger(__name__)

# Binary COPYs of id ranges (the primary key (id, timestamp) of every partition serves them), each one
# row of arrays (embeddings.interactions.events_from_array_copy): a Python step per million events, not
# per event. One REPEATABLE READ snapshot for all ranges.
_INTERACTIONS_RANGE_ROWS = 1 << 20
READ_AT_MARGIN_SECONDS = 60  # an ingest transaction's longest plausible run (see interactions_load_timed)
_INTERACTIONS_COPY = (
    "COPY (SELECT array_agg(user_id), array_agg(item_id), array_agg(weight){timestamps} FROM recsys_interaction"
    " WHERE id >= {low} AND id < {high} HAVING count(*) > 0) TO STDOUT (FORMAT BINARY)"
)


def use_gpu_setting() -> bool | None:
    """RECSYS_USE_GPU as ``fit`` takes it: None lets implicit's CUDA build decide (auto)."""
    if settings.RECSYS_USE_GPU == "auto":
        return None
    if settings.RECSYS_USE_GPU == "true" and not cuda_available():
        raise RuntimeError("RECSYS_USE_GPU=true, but implicit was built without CUDA or sees no GPU")
    return settings.RECSYS_USE_GPU == "true"


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


# The planner's row count of every partition: the columns' preallocation (a short hint only costs a grow).
_INTERACTIONS_ESTIMATE = (
    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'recsys_interaction'::regclass"
)


def interactions_load(*, half_life_days: float | None, now: float | None = None) -> InteractionMatrix:
    """All interactions as a weighted CSR matrix, streamed by binary COPY into numpy columns.

    Memory: 12 bytes an event while reading (int32 ids, float32 decayed weights; timestamps are used per
    group and dropped), then the CSR (8 bytes a distinct pair) — measured in BENCHMARKS.md (bench/scale.py).
    """
    return interactions_load_timed(half_life_days=half_life_days, now=now, with_times=False)[0]


def interactions_load_timed(
    *, half_life_days: float | None, now: float | None = None, with_times: bool = True
) -> tuple[InteractionMatrix, sp.csr_matrix | None]:
    """The weighted matrix and, with ``with_times`` (the ranking stage's input; 8 more bytes an event
    while reading), each pair's latest event time over the same rows and columns."""
    at = now or time.time()
    # Before the snapshot, less what an ingest transaction that began earlier and commits after it
    # may take: events stamped later than this are not all in it.
    read_at = timezone.now() - timedelta(seconds=READ_AT_MARGIN_SECONDS)

    def weigh(weights: Any, timestamps: Any) -> Any:
        return weights * decay(timestamps, now=at, half_life_days=half_life_days)

    outermost = not connection.in_atomic_block
    with transaction.atomic():
        connection.ensure_connection()
        with connection.connection.cursor() as cursor:
            if outermost:  # one snapshot for every range (inside a caller's transaction, the caller's)
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(_INTERACTIONS_ESTIMATE)
            expected = int(cursor.fetchone()[0] * 1.05)  # type: ignore[index]
            cursor.execute("SELECT coalesce(min(id), 0), coalesce(max(id), -1) FROM recsys_interaction")
            low, high = cursor.fetchone()  # type: ignore[misc]
            events = events_from_array_copy(
                _range_copies(cursor, low, high, with_timestamps=bool(half_life_days) or with_times),
                expected_rows=expected,
                weigh=weigh if half_life_days else None,
                timestamps=with_times,
            )
    data = replace(build_matrix(events.user_ids, events.item_ids, events.weights), read_at=read_at)
    if not with_times:
        return data, None
    return data, latest_times(data, events.user_ids, events.item_ids, events.timestamps)


def _range_copies(cursor: Any, low: int, high: int, *, with_timestamps: bool) -> Iterator[Iterator[bytes]]:
    timestamps = ", array_agg(date_part('epoch', timestamp))" if with_timestamps else ""
    for start in range(low, high + 1, _INTERACTIONS_RANGE_ROWS):
        statement = _INTERACTIONS_COPY.format(timestamps=timestamps, low=start, high=start + _INTERACTIONS_RANGE_ROWS)
        with cursor.copy(statement) as copy:
            yield iter(copy)


def weak_negatives_load(data: InteractionMatrix, *, weight: float | None = None) -> Any:
    """Items shown to users who never used them, as ``-weight`` entries aligned with ``data``
    (RECSYS_IMPRESSION_NEGATIVE_WEIGHT unless given; ``None`` when it is 0: impressions unused)."""
    from recsys.feedback.store import impressions_unused_read

    weight = settings.RECSYS_IMPRESSION_NEGATIVE_WEIGHT if weight is None else weight
    if not weight:
        return None
    user_ids, item_ids = impressions_unused_read()
    return weak_negatives_build(data, user_ids, item_ids, weight=weight)


def collaborative_version_create(*, params: LearnerParams | None = None) -> ModelVersion:
    """Claim a collaborative training run (refused while another one's lease is live)."""
    params = params or learner_params_from_settings()
    return runs.run_claim(kind=Kind.COLLABORATIVE, algorithm=params.algorithm, params=params.as_dict())


def collaborative_model_train(*, version_id: int) -> ModelVersion:
    """Run a claimed version end to end; on any failure it is marked failed and serving is untouched."""
    if runs.run_execute(version_id=version_id, work=_train) is None and not runs.run_unconcluded(version_id):
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
    data, times = interactions_load_timed(
        half_life_days=settings.RECSYS_CF_HALF_LIFE_DAYS, with_times=settings.RECSYS_RANKING
    )
    negatives = weak_negatives_load(data)
    timings["load"] = time.perf_counter() - started
    if data.matrix.nnz == 0:
        raise ValueError("there are no interactions to learn from")
    runs.run_progress(version, stage="evaluating", users=data.shape[0], items=data.shape[1])
    started = time.perf_counter()
    selection = _select(
        data.matrix,
        LearnerParams(**version.params),
        negatives,
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
    if selection.search_seconds is not None:  # the candidates; evaluate is the split, the winner's refit and metrics
        timings["search"] = selection.search_seconds
    timings["evaluate"] = time.perf_counter() - started - (selection.search_seconds or 0.0)
    version.algorithm, version.params = params.algorithm, params.as_dict()
    runs.run_progress(version, stage="fitting", candidates=tried)
    started = time.perf_counter()
    svds: dict[int, Svd] = {}  # the final fit's SVD, which a cut to fewer dimensions reuses
    factors = _fit(data.matrix, params, negatives, svd_cache=svds)
    timings["fit"] = time.perf_counter() - started
    runs.run_progress(version, stage="storing")
    started = time.perf_counter()
    _store(version, data, factors)
    timings["store"] = time.perf_counter() - started
    started = time.perf_counter()
    _index_measure(version, data, factors, seed=params.random_state)
    timings["ann"] = time.perf_counter() - started
    if _unservable(version.metrics, params, factors.dimensions):
        started = time.perf_counter()
        params, factors = _servable_cut(version, data, selection, params, factors, svds)
        version.algorithm, version.params = params.algorithm, params.as_dict()
        timings["servable"] = time.perf_counter() - started
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
    if settings.RECSYS_COLD_ITEMS:
        started = time.perf_counter()
        learned = content_map_learn(
            item_ids=data.item_ids,
            item_vectors=factors.item,
            fold_in=factors.item_in,
            user_vectors=factors.user,
            interactions=data.matrix,
            validation=(selection.split, selection.factors),
            max_users=settings.RECSYS_EVAL_MAX_USERS,
            seed=params.random_state,
        )
        if learned is not None:
            artifacts.content_version, artifacts.content_map, report = learned
            version.metrics["content_map_r2"] = report["r2"]
            if "ndcg@10" in report:
                version.metrics["content_map_ndcg@10"] = report["ndcg@10"]
            version.metrics.update({f"content_map_{k}": v for k, v in report.items() if k.startswith("shrinkage")})
        timings["content_map"] = time.perf_counter() - started
    artifacts.save()
    version.dimensions = factors.dimensions
    version.item_gram = None if factors.item_in is not None else gram_matrix(factors.item).tolist()
    version.counts = {"users": data.shape[0], "items": data.shape[1], "interactions": int(data.matrix.nnz)}
    if negatives is not None:
        version.counts["weak_negatives"] = int(negatives.nnz)
    version.timings = {k: round(v, 3) for k, v in timings.items()}
    runs.run_finish(version)


def _fit(matrix: Any, params: LearnerParams, negatives: Any = None, svd_cache: dict[int, Svd] | None = None) -> Factors:
    """The chosen learner fitted as a run fits it: on its confidences, the GPU and threads as configured
    (EASE's SVD kept in ``svd_cache`` when given, and taken from it when it holds one of its rank)."""
    return fit(
        _confidences(matrix, params, negatives),
        params,
        use_gpu=use_gpu_setting(),
        svd_cache=svd_cache,
        threads=training_threads(),
    )


def _confidences(matrix: Any, params: LearnerParams, negatives: Any = None) -> Any:
    """The matrix the chosen learner fits on (BM25 when the search picked it); EASE reads the summed
    weights, which is also what its fold-in sums, so its users fold in exactly.

    Weak negatives (shown, never used) join ALS only, after BM25 so that they keep their configured
    confidence: ALS reads them as preference 0 with that confidence. BPR and LMF learn from which
    entries are positive, and EASE's Gram matrix would turn two shown-and-ignored items into a
    similar pair, so those three ignore them.
    """
    if params.algorithm == "ease":
        return learner_weights(matrix, params)
    confidences = learner_confidences(matrix, params)
    if params.algorithm != "als":
        return confidences
    return with_weak_negatives(confidences, negatives, alpha=params.alpha)


def tuning_settings(configured: LearnerParams, n_items: int) -> TuningSettings:
    """The search's budget and starting points from the settings (``RECSYS_CF_TUNE*``)."""
    return TuningSettings(
        budget_seconds=settings.RECSYS_CF_TUNE_BUDGET_SECONDS,
        max_evals=settings.RECSYS_CF_TUNE_MAX_EVALS,
        eval_users=settings.RECSYS_CF_TUNE_EVAL_USERS,
        serving_tolerance=settings.RECSYS_CF_SERVING_TOLERANCE,
        switch_margin=settings.RECSYS_CF_SWITCH_MARGIN,
        sample_interactions=settings.RECSYS_CF_TUNE_SAMPLE_INTERACTIONS,
        ease=n_items <= settings.RECSYS_EASE_MAX_ITEMS,
        ease_factors=settings.RECSYS_EASE_FACTORS,
        ease_lambda_start=settings.RECSYS_EASE_LAMBDA,
        als_regularization_start=configured.regularization,
        seed=configured.random_state,
        threads=training_threads(),
    )


def training_threads() -> int:
    """RECSYS_TRAIN_THREADS, 0 meaning every core."""
    return settings.RECSYS_TRAIN_THREADS or os.cpu_count() or 1


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
    search_seconds: float | None = None
    svds: dict[int, Svd] = field(default_factory=dict)  # EASE's SVDs of ``split.train`` by rank
    # Set when ``factors`` is the search's own fit on its user sample (``_metrics_from_sample``): that
    # fit at fewer dimensions (``TuningOutcome.cut``).
    cut: Callable[[int], Factors] | None = None
    evaluate: dict[str, Any] = field(default_factory=dict)  # ranking_metrics' users: the version's metrics'

    def metrics_of(self, params: LearnerParams) -> tuple[dict[str, float], Factors]:
        """``params`` fitted on the split's train part as the version's metrics were (EASE from the
        SVD already computed there when ``params`` cut its rank; the search's own fit at
        ``params.factors`` when the metrics are the search's) and its metrics on the same users."""
        if self.cut is not None:
            factors = self.cut(params.factors)
        else:
            factors = _fit(self.split.train, params, svd_cache=self.svds)
        metrics = ranking_metrics(scores_recommender(factors.scores, self.split.train), self.split, **self.evaluate)
        return metrics, factors


def _select(
    matrix: Any, configured: LearnerParams, negatives: Any = None, report: Callable[..., None] = lambda **_: None
) -> Selection:
    """Search the learners' parameters on a per-user 80/20 split (``embeddings.tuning``), or take
    the configured learner as it is when tuning is off. The search itself runs without weak
    negatives; the winner's metrics are measured with them, as it will be fitted.

    Past RECSYS_CF_TUNE_SAMPLE_INTERACTIONS the search ran on a user sample of the split, and (with
    RECSYS_CF_METRICS_FROM_SAMPLE) the version's metrics and popularity's are measured on that
    sample's validation split with the winner as the search fitted it (no weak negatives), instead
    of refitting it on the whole split: at 10M interactions that refit cost as much as the final fit
    (BENCHMARKS.md, scale-10m). The ranking stage needs the winner on the whole split: it keeps the refit.
    """
    split = validation_split(matrix, seed=configured.random_state)
    evaluate = {"max_users": settings.RECSYS_EVAL_MAX_USERS, "seed": configured.random_state}
    search_seconds, outcome = None, None
    if settings.RECSYS_CF_TUNE:
        started = time.perf_counter()
        outcome = collaborative_search(
            split, configured, options=tuning_settings(configured, matrix.shape[1]), report=report
        )
        params, tried, search_seconds = outcome.params, outcome.tried, time.perf_counter() - started
        report(tuning_sample=outcome.sample, tuning_skipped=outcome.skipped)
    else:
        params, tried = configured, []
    svds: dict[int, Svd] = {}
    cut = None
    if outcome is not None and outcome.split is not None and _metrics_from_sample(outcome):
        split = outcome.split
        factors = outcome.factors or _fit(split.train, params, svd_cache=svds)
        cut = outcome.cut  # None exactly when ``outcome.factors`` is (no candidate ran)
    else:
        factors = _fit(split.train, params, negatives, svd_cache=svds)
    baseline = ranking_metrics(popularity_recommender(split.train), split, **evaluate)
    metrics = ranking_metrics(scores_recommender(factors.scores, split.train), split, **evaluate)
    if not tried:
        tried = [{"algorithm": params.algorithm, "ndcg@10": round(metrics["ndcg@10"], 5)}]
    if outcome is not None:  # another candidate served than the best-scoring one (tuning.serving_choose)
        metrics.update({f"tuning_{name}": value for name, value in outcome.cheaper.items()})
    return Selection(params, metrics, baseline, tried, split, factors, search_seconds, svds, cut, evaluate)


def _metrics_from_sample(outcome: TuningOutcome) -> bool:
    """The version's metrics are the search winner's on its user sample (see ``_select``)."""
    return settings.RECSYS_CF_METRICS_FROM_SAMPLE and not settings.RECSYS_RANKING and outcome.sampled


def _store(version: ModelVersion, data: InteractionMatrix, factors: Factors) -> None:
    stored = [a for a in (factors.item, factors.item_in, factors.user) if a is not None]
    version.vector_type = kind = tables.vector_type_choose(items=len(data.item_ids), values=stored)
    runs.run_tables_created(version)
    tables.tables_create(version.pk, factors.dimensions, kind)
    tables.vectors_copy(version.pk, "item", data.item_ids, factors.item, fold_in=factors.item_in, vector_type=kind)
    tables.vectors_copy(version.pk, "user", data.user_ids, factors.user, vector_type=kind, updated_at=data.read_at)
    tables.index_build(version.pk, "item", kind)


# ---- an index that serves what the model scores ---------------------------------------------------


@dataclass
class _Stored:
    """One rank of a version as stored and measured: what ``_servable_cut`` weighs."""

    params: LearnerParams
    factors: Factors
    metrics: dict[str, float]
    ef_search: int | None
    split_factors: Factors  # fitted on the validation split's train part

    @property
    def serves(self) -> float:
        """Validation NDCG@10 × the index's recall@10 (``runs.served_quality``)."""
        return runs.served_ndcg(self.metrics)


def _unservable(metrics: dict[str, float], params: LearnerParams, dimensions: int) -> bool:
    """The version's index misses RECSYS_HNSW_TARGET_RECALL even at the top of the ef_search ladder, and
    its learner can be cut to fewer dimensions without a new fit (low-rank EASE: the leading components
    of the same SVD)."""
    target, recall = settings.RECSYS_HNSW_TARGET_RECALL, metrics.get("ann_recall@10")
    return (
        bool(target)
        and recall is not None
        and recall < target
        and params.algorithm == "ease"
        and dimensions // 2 >= EASE_MIN_SERVING_FACTORS
    )


def _servable_cut(
    version: ModelVersion,
    data: InteractionMatrix,
    selection: Selection,
    params: LearnerParams,
    factors: Factors,
    svds: dict[int, Svd],
) -> tuple[LearnerParams, Factors]:
    """Serve a low-rank EASE version at half its rank, a quarter, ... while that serves more of its
    validation NDCG@10 than the rank before, as ``runs.served_quality`` counts it (NDCG@10 × the
    index's recall@10).

    An inner-product HNSW graph can fail a model's geometry: at 10M generated interactions EASE 400-d
    item norms spread 1,907-869,115 and the index found 70% of the users' top 10 at any ef_search
    (BENCHMARKS.md, scale-10m), while fewer components give better-conditioned vectors (EASE's item
    norm is 1 / diag(P), and diag(P) shrinks as more of an item lies in the kept subspace). Each cut
    is scored first on the validation split (the split's SVD, cut: cheap next to storing); one whose
    NDCG@10 could not beat what the best rank so far serves even with a perfect index is not stored.
    Otherwise its vectors replace the version's, its index is measured as before, and the halving
    goes on while the target recall is missed. If the last cut served less than the best, the best
    is stored again. The rank first fitted is kept in the version's metrics (``cut_from_*``)."""
    first = best = stored = _Stored(params, factors, version.metrics, version.ef_search, selection.factors)
    tuning = {k: v for k, v in first.metrics.items() if k.startswith("tuning_")}
    while _unservable(stored.metrics, stored.params, stored.factors.dimensions):
        # Half the dimensions stored (below ``factors`` where the catalogue clipped the rank).
        smaller = replace(
            stored.params, factors=stored.factors.dimensions // 2, svd_rank=params.svd_rank or params.factors
        )
        metrics, split_factors = selection.metrics_of(smaller)
        logger.info(
            "version %s: ANN recall@10 %.3f at %d dimensions serves %.4f; %d dimensions score %.4f",
            version.pk,
            stored.metrics.get("ann_recall@10", 1.0),
            stored.factors.dimensions,
            stored.serves,
            smaller.factors,
            metrics["ndcg@10"],
        )
        if metrics["ndcg@10"] <= best.serves:
            break  # even a perfect index would serve less
        runs.run_progress(version, stage="storing", dimensions=smaller.factors)
        factors = _fit(data.matrix, smaller, svd_cache=svds)
        stored = _store_measured(version, data, smaller, factors, metrics | tuning, split_factors)
        if stored.serves < best.serves:
            break
        best = stored
    if stored is not best:  # the last cut served less: the best rank's vectors again
        best = _store_measured(version, data, best.params, best.factors, best.metrics, best.split_factors)
    version.metrics, version.ef_search, selection.factors = dict(best.metrics), best.ef_search, best.split_factors
    if best.factors.dimensions != first.factors.dimensions:
        version.metrics.update(
            {
                "cut_from_dimensions": float(first.factors.dimensions),
                "cut_from_ndcg@10": first.metrics.get("ndcg@10", 0.0),
                "cut_from_ann_recall@10": first.metrics.get("ann_recall@10", 1.0),
            }
        )
    return best.params, best.factors


def _store_measured(
    version: ModelVersion,
    data: InteractionMatrix,
    params: LearnerParams,
    factors: Factors,
    metrics: dict[str, float],
    split_factors: Factors | None = None,
) -> _Stored:
    """Replace the version's vectors and index with ``factors`` and measure its index again."""
    tables.tables_drop_patiently(version.pk)
    _store(version, data, factors)
    version.metrics = {k: v for k, v in metrics.items() if not k.startswith("ann_")}
    version.ef_search = None
    _index_measure(version, data, factors, seed=params.random_state, top_first=True)
    return _Stored(params, factors, dict(version.metrics), version.ef_search, split_factors or factors)


def _index_measure(
    version: ModelVersion, data: InteractionMatrix, factors: Factors, *, seed: int, top_first: bool = False
) -> None:
    """Choose the version's ef_search on its stored index and record its recall@10: the users' vectors
    are what a personalised request searches with, skipping their own items. ``top_first`` for a cut
    (``ann_tuning.smallest_reaching``): a cut whose index misses the target at the ladder's top costs
    one measurement, not a search (at 10M a 200-d cut found 10-20% of its top 10)."""
    version_ef_search_tune(
        version,
        item_ids=data.item_ids,
        item_vectors=factors.item,
        query_vectors=factors.user,
        seed=seed,
        seen=data.matrix,
        top_first=top_first,
    )
