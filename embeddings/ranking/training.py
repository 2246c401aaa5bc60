"""The ranking stage inside a collaborative run: read what the database knows of the items, train
and judge the ranker on the run's validation split, and build the per-item state it serves from."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from django.conf import settings

from embeddings.evaluation import Split
from embeddings.interactions import InteractionMatrix
from embeddings.models import ActiveVersion, Kind
from embeddings.ranking.features import numeric_attributes
from embeddings.ranking.offline import (
    DAY,
    ItemFacts,
    OfflineContext,
    RankingState,
    StageOutcome,
    ranking_stage_train,
    ranking_state_build,
)
from embeddings.ranking.sources import category_index_build
from embeddings.vectors.rows import category_newest_rows, vectors_matrix
from recsys.models import Item


def item_facts_load(item_ids: npt.NDArray[np.int64], *, reference: float, attributes: list[str]) -> ItemFacts:
    """Ages (days before ``reference``), categories, numeric attributes and active content vectors
    of these items (rows aligned with ``item_ids``, which are sorted)."""
    n = len(item_ids)
    ages = np.zeros(n, np.float32)
    categories: list[list[str]] = [[] for _ in range(n)]
    attribute_rows: list[dict[str, Any] | None] = [None] * n
    fields = ["id", "categories", "published_at", "created_at"] + (["attributes"] if attributes else [])
    for row in Item.objects.filter(pk__in=item_ids.tolist()).values_list(*fields).iterator(chunk_size=5000):
        k = int(np.searchsorted(item_ids, row[0]))
        categories[k] = list(row[1] or [])
        ages[k] = (reference - (row[2] or row[3]).timestamp()) / DAY
        if attributes:
            attribute_rows[k] = row[4]
    content_version, content = _content(item_ids)
    return ItemFacts(ages, categories, numeric_attributes(attribute_rows, attributes), content, content_version)


def _content(item_ids: npt.NDArray[np.int64]) -> tuple[int | None, npt.NDArray[np.float32] | None]:
    """The active content version's id and its vectors of these items (zero rows for items without one)."""
    pointer = ActiveVersion.objects.select_related("version").filter(kind=Kind.CONTENT).first()
    if pointer is None or not pointer.version.has_tables:
        return None, None
    owners, vectors = vectors_matrix(pointer.version.item_table, "item_id", item_ids)
    if not len(owners):
        return None, None
    content = np.zeros((len(item_ids), vectors.shape[1]), np.float32)
    content[np.searchsorted(item_ids, owners)] = vectors
    return pointer.version_id, content


def ranking_stage_learn(
    *,
    split: Split,
    user_scores: Any,
    data: InteractionMatrix,
    times: sp.csr_matrix,
    seed: int,
) -> tuple[StageOutcome, RankingState, float]:
    """Train and judge the ranker on ``split`` (``user_scores(row)``: the chosen learner fitted on
    split.train); returns it, the state built from all of ``data`` for serving, and the seconds spent."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    reference = float(times.data.max()) if times.nnz else time.time()
    attributes = list(settings.RECSYS_RANKING_ATTRIBUTES)
    items = item_facts_load(data.item_ids, reference=reference, attributes=attributes)
    train_times = times.multiply(split.train != 0).tocsr()
    seconds["items"] = time.perf_counter() - started
    offline_state = ranking_state_build(split.train, train_times, data.item_ids, reference=reference)
    seconds["state"] = time.perf_counter() - started - sum(seconds.values())
    context = OfflineContext(
        split=split,
        times=train_times,
        user_scores=user_scores,
        state=offline_state,
        items=items,
        reference=reference,
        half_life_days=settings.RECSYS_CONTENT_PROFILE_HALF_LIFE_DAYS,
        depth=settings.RECSYS_RANKING_DEPTH,
    )
    outcome = ranking_stage_train(
        context,
        attributes=attributes,
        max_users=settings.RECSYS_RANKING_TRAIN_USERS,
        min_gain=settings.RECSYS_RANKING_MIN_GAIN,
        min_users=settings.RECSYS_RANKING_MIN_USERS,
        seed=seed,
    )
    seconds["train"] = time.perf_counter() - started - sum(seconds.values())
    # Serving's category_recent source reads each category's newest items from the state: twice the
    # depth leaves room for the items a user has seen or excluded.
    categories = category_index_build(
        items.categories, category_newest_rows(per_category=2 * settings.RECSYS_RANKING_DEPTH)
    )
    state = ranking_state_build(data.matrix, times, data.item_ids, reference=reference, categories=categories)
    seconds["serving_state"] = time.perf_counter() - started - sum(seconds.values())
    outcome.report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    # What serving needs to see candidates as training did (ranking/serving.py, Stage).
    outcome.report["content_version"] = items.content_version
    read_at = data.read_at.timestamp() if data.read_at is not None else reference
    outcome.report["clock_offset_seconds"] = round(max(read_at - reference, 0.0), 3)
    return outcome, state, time.perf_counter() - started
