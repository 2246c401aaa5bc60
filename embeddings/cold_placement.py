"""Cold items in the collaborative space: each collaborative run fits the content → collaborative
map (``embeddings.cold_items``), and items that have a content vector but no collaborative one get a
mapped vector in the active version (marked ``mapped``; the next retrain replaces them)."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import datetime

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from django.conf import settings
from django.db import transaction

from embeddings.answer_cache import answers_invalidate_all
from embeddings.cold_items import (
    Judges,
    StoredMap,
    map_bytes,
    map_load,
    mapped_vectors,
    shrinkage_choose,
    stored_map_fit,
)
from embeddings.encoders import encoder_learns
from embeddings.evaluation import Split
from embeddings.learners import Factors
from embeddings.models import ActiveVersion, Kind, ModelVersion, VersionArtifacts
from embeddings.vectors import rows as vector_rows

logger = logging.getLogger(__name__)
MAX_FIT_ITEMS = 50_000  # a ridge fit on 50k × 385 takes ~2 s; more items change the map little
BATCH = 1_000  # items mapped per statement


def content_map_learn(
    *,
    item_ids: npt.NDArray[np.int64],
    item_vectors: npt.NDArray[np.float32],
    fold_in: npt.NDArray[np.float32] | None,
    user_vectors: npt.NDArray[np.float32] | None = None,
    interactions: sp.csr_matrix | None = None,
    validation: tuple[Split, Factors] | None = None,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[ModelVersion, bytes, dict[str, float]] | None:
    """Fit the map from the active content version's vectors of these items to their learned
    vectors (rows aligned with ``item_ids``); None without a content version or enough overlap.
    With ``user_vectors`` and ``interactions`` (users × the same items), the users judge the map by
    how they rank held-out items (``cold_items.content_map_fit``). With ``validation`` (the run's
    validation split over the same items and the chosen learner fitted on its train part), the
    factor on mapped scores is the one under which its users rank the whole catalogue best with that
    split's cold items placed (``cold_items.shrinkage_choose``; ``max_users`` of them judge).
    Returns the content version, the map's bytes and its report (items, penalty, R², the judges'
    NDCG@10 on held-out items, the shrinkage and the validation NDCG@10 at each factor tried)."""
    pointer = ActiveVersion.objects.select_related("version").filter(kind=Kind.CONTENT).first()
    if pointer is None or not pointer.version.has_tables:
        return None
    owners, content = vector_rows.vectors_matrix(pointer.version.item_table, "item_id", item_ids)
    if len(owners) < 10:
        return None
    rows = np.searchsorted(item_ids, owners) if _sorted(item_ids) else _positions(item_ids, owners)
    every_row, every_content = rows, content  # the shrinkage judges every item, and samples its own fit
    if len(rows) > MAX_FIT_ITEMS:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), MAX_FIT_ITEMS, replace=False))
        rows, content = rows[keep], content[keep]
    judges = None
    if user_vectors is not None and interactions is not None:
        judges = Judges(user_vectors, (interactions[:, rows] > 0).astype(np.float32).tocsr())
    stored = stored_map_fit(
        content, item_vectors[rows], None if fold_in is None else fold_in[rows], judges=judges, seed=seed
    )
    fitted = stored.content_map
    report = {"items": float(len(rows)), "penalty": fitted.penalty, "r2": round(fitted.r2, 4)}
    if fitted.ndcg is not None:
        report["ndcg@10"] = round(fitted.ndcg, 4)
    if validation is not None:
        split, factors = validation
        choice = shrinkage_choose(
            split,
            factors.user,
            factors.item,
            factors.item_in,
            every_content,
            every_row,
            max_users=max_users,
            max_fit=MAX_FIT_ITEMS,
            seed=seed,
        )
        stored = replace(stored, shrinkage=choice.shrinkage)
        report["shrinkage"] = choice.shrinkage
        report["shrinkage_cold_items"] = float(choice.cold_items)
        for factor, ndcg in (choice.ndcg or {}).items():
            report[f"shrinkage_ndcg@10[{factor:g}]"] = round(ndcg, 4)
    return pointer.version, map_bytes(stored), report


def _sorted(ids: npt.NDArray[np.int64]) -> bool:
    return bool(np.all(ids[1:] >= ids[:-1]))


def _positions(ids: npt.NDArray[np.int64], wanted: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    order = np.argsort(ids)
    return np.asarray(order[np.searchsorted(ids, wanted, sorter=order)], dtype=np.int64)


_maps_lock = threading.Lock()
_maps: dict[int, tuple[int | None, StoredMap | None]] = {}


def stored_map(version_id: int) -> tuple[int | None, StoredMap | None]:
    """(content version id, map) of a collaborative version, read once per process."""
    with _maps_lock:
        if version_id in _maps:
            return _maps[version_id]
    row = (
        VersionArtifacts.objects.filter(version_id=version_id).values_list("content_version_id", "content_map").first()
    )
    found = (row[0], map_load(bytes(row[1]))) if row and row[1] else (None, None)
    with _maps_lock:
        _maps[version_id] = found
    return found


def cold_items_place(*, limit: int | None = None) -> int:
    """Map the items the active collaborative version has no vector for (or whose text changed
    since they were mapped) from the active content version; returns the rows written. Nothing
    happens when either version is missing or the map was fitted on another content version."""
    versions = {p.kind: p.version for p in ActiveVersion.objects.select_related("version") if p.version.has_tables}
    collaborative, content = versions.get(Kind.COLLABORATIVE), versions.get(Kind.CONTENT)
    if collaborative is None or content is None:
        return 0
    content_version_id, stored = stored_map(collaborative.pk)
    if stored is None or not _same_space(content_version_id, content):
        return 0
    written = seen = 0
    budget = limit or settings.RECSYS_COLD_ITEMS_MAX_PER_RUN
    while seen < budget:
        ids, vectors, mapped_from = vector_rows.items_unmapped(
            item_table=collaborative.item_table, content_table=content.item_table, limit=min(BATCH, budget - seen)
        )
        if not len(ids):
            break
        seen += len(ids)
        written += _place(collaborative.item_table, stored, ids, vectors, mapped_from)
    if written:
        logger.info("placed %d cold items in collaborative v%s", written, collaborative.pk)
        answers_invalidate_all()  # mapped items belong in personalised and similar lists now
    return written


def _same_space(fitted_on: int | None, content: ModelVersion) -> bool:
    """Whether the map, fitted on content version ``fitted_on``, reads ``content``'s vectors: the same
    version, or one of the same pretrained encoder and settings (a MiniLM version built again, a
    rollback to one: the same space; a fitted encoder's versions each have their own)."""
    if fitted_on == content.pk:
        return True
    if fitted_on is None or encoder_learns(content.params.get("encoder", "")):
        return False
    fitted = ModelVersion.objects.filter(pk=fitted_on).values_list("params", flat=True).first()
    return fitted == content.params


def _place(
    table: str,
    stored: StoredMap,
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    mapped_from: list[datetime],
) -> int:
    embedding, fold_in = mapped_vectors(stored, vectors)
    return vector_rows.mapped_vectors_upsert(
        item_table=table, ids=ids, vectors=embedding, mapped_from=mapped_from, fold_in=fold_in
    )


def cold_items_place_schedule() -> bool:
    """Ask a worker to place newly encoded items (after this transaction); False when the broker
    is away (the content sweep places them on its next beat)."""
    from embeddings import tasks

    try:
        transaction.on_commit(tasks.cold_items_place.delay)
    except Exception:  # Redis or the broker away
        logger.warning("could not schedule cold item placement", exc_info=True)
        return False
    return True
