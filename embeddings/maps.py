"""The admin's embedding map: a PCA projection of a sample of one version's item vectors, stored for reuse."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from django.utils import timezone

from embeddings.encoders import l2_normalise
from embeddings.models import EmbeddingMap, Kind, ModelVersion, Status
from embeddings.vectors.rows import items_sample, vectors_of
from recsys.errors import ModelNotReady, NotFound, ServiceUnavailable

logger = logging.getLogger(__name__)
MAX_POINTS = 20_000  # a canvas scatter stays responsive, and the JSON about 1.5 MB
TOP_CATEGORIES = 12  # colours beyond a dozen stop being told apart; the rest read "other"
TITLE_CHARS = 80


@dataclass
class Sample:
    ids: list[int]
    titles: list[str]
    categories: list[list[str]]
    clusters: list[int | None]


def unit_rows(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(n, d) rows scaled to length 1 (zero rows stay zero): the map shows directions, which is
    what similarity ranks by; raw EASE/ALS item norms span orders of magnitude, and a few long
    vectors would otherwise squash every other point into one spot."""
    return l2_normalise(vectors)


def pca_2d(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(n, 2) float32 coordinates of (n, d) vectors on their first two principal components.

    Each component's sign is fixed (its largest loading positive): SVD's sign is arbitrary, and
    a map that mirrors itself on every recompute would confuse whoever compares two of them.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    components = components[:2]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    projected = centred @ (components * np.where(signs == 0, 1.0, signs)[:, None]).T
    if projected.shape[1] < 2:  # one-dimensional vectors: a line
        projected = np.hstack([projected, np.zeros((n, 2 - projected.shape[1]))])
    return projected.astype(np.float32)


def _sample(version: ModelVersion, limit: int) -> Sample:
    rows = items_sample(table=version.item_table, limit=limit, with_cluster=version.kind == Kind.CONTENT)
    return Sample(
        ids=[int(r[0]) for r in rows],
        titles=[str(r[1])[:TITLE_CHARS] for r in rows],
        categories=[list(r[2] or []) for r in rows],
        clusters=[r[3] for r in rows],
    )


def _groups(sample: Sample, kind: str) -> tuple[list[str], list[int], str]:
    """Labels, each point's label index, and what the colour means: the content version's
    k-means cluster, else the item's first category (the most frequent ones, the rest "other")."""
    if kind == Kind.CONTENT and any(c is not None for c in sample.clusters):
        clusters = sorted({c for c in sample.clusters if c is not None})
        labels = [f"cluster {c}" for c in clusters] + ["no cluster"]
        index = {c: n for n, c in enumerate(clusters)}
        return (
            labels,
            [index.get(c, len(clusters)) if c is not None else len(clusters) for c in sample.clusters],
            "cluster",
        )
    first = [c[0] if c else "" for c in sample.categories]
    top = [name for name, _ in Counter(f for f in first if f).most_common(TOP_CATEGORIES)]
    labels = [*top, "other", "uncategorised"]
    position = {name: n for n, name in enumerate(top)}
    return labels, [position.get(f, len(top)) if f else len(top) + 1 for f in first], "category"


def embedding_map_points(version: ModelVersion, *, limit: int = MAX_POINTS) -> dict[str, Any]:
    """The map's columnar points for ``version``: projected sample, colour groups, titles, item ids."""
    sample = _sample(version, limit)
    found = vectors_of(version.item_table, "item_id", sample.ids)
    keep = [n for n, item_id in enumerate(sample.ids) if item_id in found]
    vectors = np.stack([found[sample.ids[n]] for n in keep]) if keep else np.zeros((0, version.dimensions or 2))
    coordinates = pca_2d(unit_rows(vectors.astype(np.float32)))
    kept = Sample(
        ids=[sample.ids[n] for n in keep],
        titles=[sample.titles[n] for n in keep],
        categories=[sample.categories[n] for n in keep],
        clusters=[sample.clusters[n] for n in keep],
    )
    labels, groups, coloured_by = _groups(kept, version.kind)
    return {
        "x": [round(float(v), 4) for v in coordinates[:, 0]],
        "y": [round(float(v), 4) for v in coordinates[:, 1]],
        "group": groups,
        "groups": labels,
        "item": kept.ids,
        "title": kept.titles,
        "coloured_by": coloured_by,
    }


def embedding_map_request(*, version_id: int) -> EmbeddingMap:
    """Ask a worker to (re)compute a version's map; the previous points stay shown meanwhile."""
    from embeddings import tasks

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        raise NotFound(f"model version {version_id} does not exist")
    if not version.has_tables or version.status in {Status.TRAINING, Status.FAILED}:
        raise ModelNotReady(f"version {version_id} has no vectors to map")
    emap, _ = EmbeddingMap.objects.update_or_create(
        version=version, defaults={"state": EmbeddingMap.State.PENDING, "requested_at": timezone.now(), "error": ""}
    )
    try:
        # Sent at once, as training_enqueue does: the row above is committed (autocommit).
        tasks.embedding_map_compute.delay(version_id)
    except Exception as error:  # kombu raises several connection error types
        EmbeddingMap.objects.filter(pk=emap.pk).update(state=EmbeddingMap.State.FAILED, error=str(error)[:2000])
        raise ServiceUnavailable("the task queue (Redis) is unavailable; retry shortly") from error
    return emap


def embedding_map_compute(*, version_id: int) -> EmbeddingMap:
    """Compute and store a version's map (the worker's side); a failure is recorded on the row."""
    version = ModelVersion.objects.get(pk=version_id)
    emap, _ = EmbeddingMap.objects.get_or_create(version=version, defaults={"requested_at": timezone.now()})
    try:
        if not version.has_tables:
            raise ModelNotReady(f"version {version_id}'s vectors were dropped")
        points = embedding_map_points(version)
    except Exception as error:
        logger.exception("embedding map of version %s failed", version_id)
        emap.state, emap.error, emap.computed_at = EmbeddingMap.State.FAILED, f"{error}"[:2000], timezone.now()
        emap.save(update_fields=["state", "error", "computed_at"])
        return emap
    emap.state, emap.error, emap.computed_at = EmbeddingMap.State.READY, "", timezone.now()
    emap.points, emap.sample_size, emap.coloured_by = points, len(points["x"]), points["coloured_by"]
    emap.save()
    return emap


def embedding_map_get(*, version_id: int) -> EmbeddingMap | None:
    """The stored map of a version without its points (the page fetches those separately)."""
    return EmbeddingMap.objects.defer("points").filter(version_id=version_id).first()


def embedding_map_points_get(*, version_id: int) -> dict[str, Any] | None:
    return EmbeddingMap.objects.filter(version_id=version_id).values_list("points", flat=True).first()


def mappable_versions() -> list[ModelVersion]:
    """Versions whose vectors still exist, newest first (the map's version picker)."""
    return list(
        ModelVersion.objects.filter(has_tables=True)
        .exclude(status__in=[Status.TRAINING, Status.FAILED])
        .only("pk", "kind", "algorithm", "status", "dimensions")
        .order_by("-pk")
    )
