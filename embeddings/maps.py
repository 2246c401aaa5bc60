"""The admin's embedding map: a t-SNE (PCA as the fallback) of a sample of one version's item
vectors, with content clusters named by their most distinctive words, stored for reuse."""

from __future__ import annotations

import colorsys
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db.models.fields.json import KT
from django.db.models.functions import Substr
from django.utils import timezone

from embeddings.encoders import l2_normalise
from embeddings.models import ActiveVersion, EmbeddingMap, Kind, ModelVersion, Status
from embeddings.vectors.rows import items_sample, vectors_of
from recsys.errors import DomainError, ModelNotReady, NotFound, ServiceUnavailable
from recsys.models import Item

logger = logging.getLogger(__name__)
# t-SNE's time grows as n log n: 2,000 points of 64-d took 12 s on one idle core (500 iterations),
# so 5,000 should take about 35 s; the demo's 2,000-item maps took 240 s on a worker sharing two
# cores with a load of 18. 5,000 points are enough to show every neighbourhood of a catalogue.
MAX_POINTS = 5_000
TSNE_MIN_POINTS = 10  # below this a neighbourhood layout means nothing: PCA
TSNE_INPUT_DIMENSIONS = 50  # PCA to 50 dimensions first, as t-SNE's authors advise
TOP_CATEGORIES = 20  # as many as the palette has clearly distinct colours; the rest read "other"
TITLE_CHARS = 80
NAME_WORDS = 3  # words in a cluster's name
WORD_PATTERN = r"(?u)\b[^\W\d_]{3,}\b"  # words of three or more letters: no numbers, no "of"
TEXT_CHARS = 2_000  # of each item's text read for naming (titles and openings carry the topic)
# Sasha Trubetskoy's distinct colours, most distinct first, without the greys (kept for "other")
# and white, plus black and slate blue; more groups continue around the hue circle.
DISTINCT_COLOURS = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
    "#469990", "#dcbeff", "#9a6324", "#ffe119", "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075",
    "#000000", "#6a5acd",
]  # fmt: skip
REST_COLOURS = {"other": "#c8c8c8", "uncategorised": "#e4e4e4", "no cluster": "#e4e4e4"}


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


def tsne_2d(vectors: npt.NDArray[np.float32], *, seed: int = 0) -> npt.NDArray[np.float32]:
    """(n, 2) float32 t-SNE coordinates of (n, d) unit vectors: near items stay near, so the
    neighbourhoods similarity ranks by show as islands (a PCA of 400 dimensions is one blob)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = vectors
    if min(vectors.shape) > TSNE_INPUT_DIMENSIONS:
        reduced = PCA(n_components=TSNE_INPUT_DIMENSIONS, random_state=seed).fit_transform(vectors)
    perplexity = min(30.0, max(2.0, (len(vectors) - 1) / 3))  # must stay below n
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    return np.asarray(tsne.fit_transform(reduced), dtype=np.float32)


def projection_2d(vectors: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], str]:
    """(n, 2) coordinates of (n, d) unit vectors and the projection used: t-SNE, or PCA for a
    handful of points, for one-dimensional vectors, or when t-SNE fails."""
    if len(vectors) >= TSNE_MIN_POINTS and vectors.shape[1] >= 2:
        try:
            return tsne_2d(vectors), "t-SNE"
        except Exception:  # a map from PCA beats no map
            logger.exception("t-SNE of %s points failed; using PCA", len(vectors))
    return pca_2d(vectors), "PCA"


def cluster_names(texts: list[str], clusters: list[int], *, words: int = NAME_WORDS) -> dict[int, str]:
    """Each cluster's most distinctive words, by class-based TF-IDF over its items' texts.

    A cluster's texts are one document: a word weighs its frequency there times
    log(1 + mean words per cluster / its frequency over all clusters), so words every cluster
    uses ("new", "best") sink and the words that set a cluster apart rise (BERTopic's c-TF-IDF).
    """
    from sklearn.feature_extraction.text import CountVectorizer

    ids = sorted(set(clusters))
    documents = ["\n".join(t for t, c in zip(texts, clusters, strict=True) if c == cid) for cid in ids]
    vectorizer = CountVectorizer(stop_words="english", token_pattern=WORD_PATTERN)
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # no words at all (empty texts, only stop words)
        return {cid: "" for cid in ids}
    vocabulary = vectorizer.get_feature_names_out()
    per_cluster = counts.sum(axis=1, keepdims=True)
    frequency = counts / np.where(per_cluster == 0, 1, per_cluster)
    idf = np.log(1 + per_cluster.mean() / np.maximum(counts.sum(axis=0), 1))
    scores = frequency * idf
    names = {}
    for row, cid in enumerate(ids):
        best = [n for n in np.argsort(-scores[row], kind="stable")[:words] if scores[row, n] > 0]
        names[cid] = ", ".join(str(vocabulary[n]) for n in best)
    return names


def palette(labels: list[str]) -> list[str]:
    """A colour per label, all distinct: the 20 distinct colours, then further hues; the
    catch-all groups ("other", "uncategorised", "no cluster") in greys."""
    colours, n = [], 0
    for label in labels:
        if label in REST_COLOURS:
            colours.append(REST_COLOURS[label])
            continue
        if n < len(DISTINCT_COLOURS):
            colours.append(DISTINCT_COLOURS[n])
        else:  # golden-angle hues, alternating lightness, never repeat
            red, green, blue = colorsys.hls_to_rgb((n * 0.618034) % 1, 0.45 + 0.15 * (n % 2), 0.75)
            colours.append(f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}")
        n += 1
    return colours


def _item_texts(ids: list[int]) -> dict[int, str]:
    rows = Item.objects.filter(pk__in=ids).values_list("pk", "title", Substr("text", 1, TEXT_CHARS))
    return {pk: f"{title}\n{text}" for pk, title, text in rows}


def _groups(sample: Sample, kind: str) -> tuple[list[str], list[int], str, dict[int, str]]:
    """Labels, each point's label index, what the colour means, and the clusters' names: a
    content version's k-means clusters named by their words, else the items' first category
    (the most frequent ones, the rest "other")."""
    if kind == Kind.CONTENT and any(c is not None for c in sample.clusters):
        clustered = [n for n, c in enumerate(sample.clusters) if c is not None]
        texts = _item_texts([sample.ids[n] for n in clustered])
        names = cluster_names(
            [texts.get(sample.ids[n], "") for n in clustered], [int(sample.clusters[n] or 0) for n in clustered]
        )
        clusters = sorted(names)
        labels = [names[c] or f"cluster {c}" for c in clusters] + ["no cluster"]
        index = {c: n for n, c in enumerate(clusters)}
        groups = [index[c] if c is not None else len(clusters) for c in sample.clusters]
        return labels, groups, "cluster", names
    first = [c[0] if c else "" for c in sample.categories]
    top = [name for name, _ in Counter(f for f in first if f).most_common(TOP_CATEGORIES)]
    labels = [*top, "other", "uncategorised"]
    position = {name: n for n, name in enumerate(top)}
    return labels, [position.get(f, len(top)) if f else len(top) + 1 for f in first], "category", {}


def embedding_map_points(version: ModelVersion, *, limit: int = MAX_POINTS) -> dict[str, Any]:
    """The map's columnar points for ``version``: projected sample, colour groups with their
    colours, titles, item ids, and the clusters' names (content versions)."""
    sample = _sample(version, limit)
    found = vectors_of(version.item_table, "item_id", sample.ids)
    keep = [n for n, item_id in enumerate(sample.ids) if item_id in found]
    vectors = np.stack([found[sample.ids[n]] for n in keep]) if keep else np.zeros((0, version.dimensions or 2))
    started = time.perf_counter()
    coordinates, projection = projection_2d(unit_rows(vectors.astype(np.float32)))
    kept = Sample(
        ids=[sample.ids[n] for n in keep],
        titles=[sample.titles[n] for n in keep],
        categories=[sample.categories[n] for n in keep],
        clusters=[sample.clusters[n] for n in keep],
    )
    labels, groups, coloured_by, names = _groups(kept, version.kind)
    return {
        "x": [round(float(v), 4) for v in coordinates[:, 0]],
        "y": [round(float(v), 4) for v in coordinates[:, 1]],
        "group": groups,
        "groups": labels,
        "colours": palette(labels),
        "item": kept.ids,
        "title": kept.titles,
        "coloured_by": coloured_by,
        "cluster_names": {str(c): name for c, name in names.items()},
        "projection": projection,
        "seconds": round(time.perf_counter() - started, 1),
    }


def embedding_map_on_activation(*, version_id: int) -> None:
    """A version became active: have a worker compute its map, unless one is kept already (a
    rollback). Never raises: serving has switched, and a map can still be asked for by hand."""
    if EmbeddingMap.objects.filter(version_id=version_id, state=EmbeddingMap.State.READY).exists():
        return
    try:
        embedding_map_request(version_id=version_id)
    except DomainError as error:
        logger.warning("map of version %s not requested: %s", version_id, error.message)


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


MAP_LOST_AFTER = timedelta(minutes=30)


def embedding_maps_resume(*, now: datetime | None = None) -> list[int]:
    """Beat: ask again for the active versions' maps whose request never reached a worker: none
    (the activation's request was lost), failed without a computation (Redis was away when asked),
    or pending for MAP_LOST_AFTER (the task was lost). A map whose computation failed stays failed.
    Returns the versions asked for."""
    now = now or timezone.now()
    resumed = []
    for version_id in ActiveVersion.objects.values_list("version_id", flat=True):
        emap = EmbeddingMap.objects.filter(version_id=version_id).only("state", "requested_at", "computed_at").first()
        lost = (
            emap is None
            or (
                emap.state == EmbeddingMap.State.FAILED
                and (emap.computed_at is None or emap.computed_at < emap.requested_at)
            )
            or (emap.state == EmbeddingMap.State.PENDING and emap.requested_at <= now - MAP_LOST_AFTER)
        )
        if not lost:
            continue
        try:
            embedding_map_request(version_id=version_id)
        except DomainError as error:
            logger.warning("map of version %s not asked for again: %s", version_id, error.message)
        else:
            resumed.append(version_id)
    return resumed


def embedding_map_compute(*, version_id: int) -> EmbeddingMap | None:
    """Compute and store a version's map (the worker's side); a failure is recorded on the row.
    None when the version was deleted after the map was asked for (its map row went with it)."""
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        logger.info("embedding map of version %s skipped: the version was deleted", version_id)
        return None
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
    """The stored map of a version without its points (the page fetches those separately), with
    the projection it used as ``projection``."""
    return (
        EmbeddingMap.objects.defer("points")
        .annotate(projection=KT("points__projection"))
        .filter(version_id=version_id)
        .first()
    )


def embedding_map_points_get(*, version_id: int) -> dict[str, Any] | None:
    return EmbeddingMap.objects.filter(version_id=version_id).values_list("points", flat=True).first()


def cluster_names_get(*, version_id: int) -> dict[int, str]:
    """The names of a content version's clusters, from its map ({} before the map is computed)."""
    names = (
        EmbeddingMap.objects.filter(version_id=version_id, state=EmbeddingMap.State.READY)
        .values_list("points__cluster_names", flat=True)
        .first()
    )
    return {int(c): str(name) for c, name in (names or {}).items()}


def mappable_versions() -> list[ModelVersion]:
    """Versions whose vectors still exist, newest first (the map's version picker)."""
    return list(
        ModelVersion.objects.filter(has_tables=True)
        .exclude(status__in=[Status.TRAINING, Status.FAILED])
        .only("pk", "kind", "algorithm", "status", "dimensions")
        .order_by("-pk")
    )
