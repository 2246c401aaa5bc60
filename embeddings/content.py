"""Content versions: encode item text into a version's table, keep it current, build anew when the encoder changes.

A full build (a new content version) encodes every item, clusters the vectors, COPYs them and
builds the HNSW index before serving switches to it. Between builds, items whose text changed
(``content_changed_at`` newer than what was encoded) are encoded in small batches by a task that
ingestion schedules within a second and a beat sweep repeats, so nothing waits for Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from embeddings import runs
from embeddings.ann_tuning import version_ef_search_tune
from embeddings.answer_cache import answers_invalidate_all
from embeddings.encoders import (
    EncoderNotFitted,
    TextEncoder,
    encoder_cached,
    encoder_create,
    encoder_learns,
    item_text,
    l2_normalise,
    nonzero_rows,
)
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from embeddings.vectors import rows as vector_rows
from embeddings.vectors import tables
from recsys.models import Item

logger = logging.getLogger(__name__)
ENCODE_LOCK = "recsys:content:encode"
SCHEDULED_KEY = "content:encode:scheduled"
DEBOUNCE_SECONDS = 1
CONTINUATION_KEY = "content:encode:continuation"  # a next part of the encoding is queued
CONTINUATION_TTL_SECONDS = 600  # a lost task (broker away) frees the key for the next sweep
FIRST_BATCH = 16  # items in an encoding's first batch, before their time is known
# Characters in an encoding's first batch: 16 texts of the API's 100,000 characters (in CJK scripts
# a token per character) took minutes and could pass a task's time limit before writing anything.
FIRST_BATCH_CHARS = 20_000
BUILD_PROGRESS_EVERY = 2048  # items between progress updates of a build


def content_encoder_config() -> dict[str, Any]:
    """The configured encoder and text recipe; a content version records it as its params."""
    config: dict[str, Any] = {"encoder": settings.RECSYS_CONTENT_ENCODER, "fields": settings.RECSYS_CONTENT_FIELDS}
    if settings.RECSYS_CONTENT_ENCODER == "tfidf-svd":
        config["dimensions"] = settings.RECSYS_CONTENT_DIMENSIONS
    return config


def content_version_create(*, config: dict[str, Any] | None = None) -> ModelVersion:
    """Claim a content build with the configured encoder (refused while another build runs)."""
    config = config or content_encoder_config()
    return runs.run_claim(kind=Kind.CONTENT, algorithm=config["encoder"], params=config)


def _encoder_for(
    config: dict[str, Any],
    state: bytes | Callable[[], bytes] = b"",
    *,
    cached: bool = False,
    cache_key: int | None = None,
) -> TextEncoder:
    """A new encoder for ``config`` (builds fit their own), or with ``cached`` the process's shared
    one (``cache_key`` names a fitted state so that it is not hashed on every call; ``state`` may
    then be a function that reads it, called only by the load)."""
    options = {k: v for k, v in config.items() if k not in {"encoder", "fields"}}
    if cached:
        return encoder_cached(name=config["encoder"], state=state, cache_key=cache_key, **options)
    assert isinstance(state, bytes)  # a new encoder is given its state
    return encoder_create(name=config["encoder"], state=state, **options)


def version_encoder(version: ModelVersion, *, for_queries: bool = False) -> TextEncoder:
    """The encoder of a content version, loaded once per process: workers encode new items with
    it, the web process search queries (``for_queries``: one thread, as each gunicorn worker
    encodes one short query at a time and the cores are shared by all of them)."""
    config = dict(version.params)
    if for_queries and config["encoder"] not in {"tfidf-svd", "fake"}:
        config["threads"] = 1
    if not encoder_learns(config["encoder"]):
        # A pretrained one is cached by its settings alone: a new content version of the same model
        # does not load it again.
        return _encoder_for(config, cached=True)
    # A fitted one is cached per version, and its state (a TF-IDF vocabulary and projection: up to
    # ~200 MB) read only by the load: reading it from each instance of the version fetched it again
    # every time the serving pointer was re-read, every 2 s in every web process.
    return _encoder_for(config, lambda: _encoder_state(version), cached=True, cache_key=version.pk)


def _encoder_state(version: ModelVersion) -> bytes:
    if "encoder_state" in version.get_deferred_fields():
        state = ModelVersion.objects.filter(pk=version.pk).values_list("encoder_state", flat=True).first()
    else:
        state = version.encoder_state
    if not state:
        raise EncoderNotFitted(f"content v{version.pk} has no fitted encoder state")
    return bytes(state)


@dataclass
class ItemTexts:
    ids: npt.NDArray[np.int64]
    texts: list[str]
    changed_at: list[datetime]


def _item_texts(rows: list[tuple[Any, ...]], fields: list[str]) -> ItemTexts:
    return ItemTexts(
        ids=np.array([r[0] for r in rows], dtype=np.int64),
        texts=[item_text(title=r[1], text=r[2], categories=r[3] or [], fields=fields) for r in rows],
        changed_at=[r[4] for r in rows],
    )


def _within_chars(items: ItemTexts, chars: float) -> ItemTexts:
    """The first of ``items`` whose texts hold at most ``chars`` characters together (one at least)."""
    total, keep = 0, 0
    for text in items.texts:
        total += len(text)
        if keep and total > chars:
            break
        keep += 1
    return ItemTexts(items.ids[:keep], items.texts[:keep], items.changed_at[:keep])


def _encode(encoder: TextEncoder, texts: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(n, d) vectors and whether each row is a real vector (empty text and, for TF-IDF, text
    with no known word get none)."""
    vectors = np.zeros((len(texts), encoder.dimensions), dtype=np.float32)
    present = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if present.any():
        vectors[present] = encoder.encode([t for t, p in zip(texts, present, strict=True) if p])
    return vectors, present & nonzero_rows(vectors)


# ---- full builds --------------------------------------------------------------------------------


def content_model_build(*, version_id: int) -> ModelVersion:
    """Build a claimed content version end to end and switch serving to it; a failure leaves
    serving untouched."""
    if runs.run_execute(version_id=version_id, work=_build) is None and not runs.run_unconcluded(version_id):
        return ModelVersion.objects.get(pk=version_id)  # a retry of a run that already finished
    version = runs.model_version_activate(version_id=version_id)
    content_items_encode()  # items whose text changed while the build ran
    return version


def _build(version: ModelVersion) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rows = list(
        Item.objects.order_by("id")
        .values_list("id", "title", "text", "categories", "content_changed_at", "created_at")
        .iterator(chunk_size=5000)
    )
    items = _item_texts([(r[0], r[1], r[2], r[3], r[4] or r[5]) for r in rows], version.params["fields"])
    timings["load"] = time.perf_counter() - started
    encoder = _encoder_for(version.params)
    started = time.perf_counter()
    encoder.fit([t for t in items.texts if t.strip()])
    timings["fit"] = time.perf_counter() - started
    started = time.perf_counter()
    vectors, present = _encode_with_progress(version, encoder, items.texts)
    timings["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    centroids = kmeans_centroids(vectors[present], settings.RECSYS_CONTENT_CLUSTERS)
    clusters = nearest_centroid(vectors, centroids)
    timings["cluster"] = time.perf_counter() - started
    runs.run_progress(version, stage="storing", done=len(items.texts), left=0)
    started = time.perf_counter()
    version.vector_type = kind = tables.vector_type_choose(items=len(items.texts), values=[vectors])
    runs.run_tables_created(version)
    tables.content_table_create(version.pk, encoder.dimensions, kind)
    tables.content_vectors_write(version.pk, items.ids, vectors, present, items.changed_at, clusters)
    tables.index_build(version.pk, "item", kind)
    timings["store"] = time.perf_counter() - started
    started = time.perf_counter()
    version.metrics = {"items_per_second": round(len(items.texts) / max(timings["encode"], 1e-9), 1)}
    # Items' own vectors are what similar items by content search with.
    stored = vectors[present]
    version_ef_search_tune(
        version,
        item_ids=np.asarray(items.ids)[present],
        item_vectors=stored,
        query_vectors=stored,
        seed=version.pk,
        queries_are_items=True,
    )
    timings["ann"] = time.perf_counter() - started
    encoded = int(present.sum())
    version.dimensions = encoder.dimensions
    version.encoder_state = encoder.state()
    version.centroids = centroids.round(6).tolist()
    version.counts = {"items": len(items.texts), "encoded": encoded, "without_text": len(items.texts) - encoded}
    version.timings = {k: round(v, 3) for k, v in timings.items()}
    runs.run_finish(version)


def _encode_with_progress(
    version: ModelVersion, encoder: TextEncoder, texts: list[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    parts = []
    for start in range(0, len(texts), BUILD_PROGRESS_EVERY):
        runs.run_progress(version, stage="encoding", done=start, left=len(texts) - start)
        parts.append(_encode(encoder, texts[start : start + BUILD_PROGRESS_EVERY]))
    if not parts:
        return np.zeros((0, encoder.dimensions), np.float32), np.zeros(0, bool)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def kmeans_centroids(vectors: npt.NDArray[np.float32], k: int, *, seed: int = 0) -> npt.NDArray[np.float32]:
    """(k', d) unit-length k-means centroids of (n, d) unit vectors (k' = min(k, n); spherical
    k-means: assignment by inner product, so clusters follow cosine similarity)."""
    k = min(k, len(vectors))
    if k == 0:
        return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=50).fit(vectors)
    return l2_normalise(model.cluster_centers_)


def nearest_centroid(vectors: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """(n,) index of each row's most similar centroid (0 when there are no centroids)."""
    if len(centroids) == 0:
        return np.zeros(len(vectors), dtype=np.int64)
    return np.asarray((vectors @ centroids.T).argmax(axis=1), dtype=np.int64)


# ---- keeping the active version current ---------------------------------------------------------


def content_items_encode(*, budget_seconds: float | None = None, continuation: bool = False) -> int:
    """Encode items created or changed since the active content version saw them, for about
    ``budget_seconds`` (RECSYS_CONTENT_ENCODE_BUDGET_SECONDS); returns how many rows were written.
    One encoder at a time (an advisory lock); a second call returns 0. What is left goes on in a
    task of its own (``continuation``: this call is that task), queued behind what arrived
    meanwhile: the fold-ins sharing the realtime worker wait about one budget, not the whole
    backlog (4 minutes behind 700 long items before, the probe of 2026-12-04)."""
    if continuation:
        _continuation_taken()
    pointers = ActiveVersion.objects.select_related("version").defer("version__encoder_state", "version__item_gram")
    pointer = pointers.filter(kind=Kind.CONTENT).first()  # the state is read once, by the encoder's load
    if pointer is None or not pointer.version.has_tables:
        return 0
    version = pointer.version
    budget = settings.RECSYS_CONTENT_ENCODE_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    written, left = 0, True
    with _advisory_lock(ENCODE_LOCK) as acquired:
        if not acquired:
            return 0
        encoder = version_encoder(version)
        centroids = np.asarray(version.centroids or [], dtype=np.float32)
        # Batches sized to the budget from the time an item and a character have taken (long texts:
        # a third of a second each with MiniLM here), starting small; always one item at least.
        size, chars = min(FIRST_BATCH, settings.RECSYS_CONTENT_BATCH), float(FIRST_BATCH_CHARS)
        while left and (not written or time.monotonic() < deadline):
            started = time.monotonic()
            marked = vector_rows.items_unencoded(item_table=version.item_table, limit=size)
            left = len(marked) == size  # fewer: none was left (items written since schedule their own)
            if marked:
                items = _within_chars(_item_texts(marked, version.params["fields"]), chars)
                left = left or len(items.texts) < len(marked)
                marked = marked[: len(items.texts)]
                vectors, present = _encode(encoder, items.texts)
                clusters = nearest_centroid(vectors, centroids) if len(centroids) else None
                written += tables.content_vectors_write(
                    version.pk, items.ids, vectors, present, items.changed_at, clusters
                )
                spent, remaining = time.monotonic() - started, max(deadline - time.monotonic(), 0.0)
                size = int(min(settings.RECSYS_CONTENT_BATCH, max(1, remaining / (spent / len(marked)))))
                chars = remaining / (spent / max(sum(map(len, items.texts)), 1))
    if written and left:
        _continuation_queue()
    if written:
        answers_invalidate_all()  # new items belong in similar lists and search results now
        if settings.RECSYS_COLD_ITEMS:
            from embeddings.cold_placement import cold_items_place_schedule

            cold_items_place_schedule()  # and, mapped, in the collaborative space
    return written


def _continuation_queue() -> None:
    """Queue the encoding's next part, unless one is queued already (sweeps and schedules that
    each found the backlog would otherwise start chains of their own); Redis away: the beat sweep
    goes on with it."""
    from embeddings import tasks
    from recsys import redis_store

    key = redis_store.key(CONTINUATION_KEY)
    try:
        first = redis_store.run(lambda client: client.set(key, 1, nx=True, ex=CONTINUATION_TTL_SECONDS))
    except redis_store.RedisUnavailable:
        return
    if first:
        transaction.on_commit(lambda: tasks.content_items_encode.delay(continuation=True))


def _continuation_taken() -> None:
    from recsys import redis_store

    try:
        redis_store.run(lambda client: client.delete(redis_store.key(CONTINUATION_KEY)))
    except redis_store.RedisUnavailable:
        pass


def items_awaiting_encoding() -> int | None:
    """How many items the active content version has not encoded in their current form."""
    pointer = (
        ActiveVersion.objects.select_related("version").only("kind", "version__id").filter(kind=Kind.CONTENT).first()
    )
    if pointer is None:
        return None
    return vector_rows.items_unencoded_count(item_table=pointer.version.item_table)


class _advisory_lock:
    """A session-level advisory lock taken without waiting; ``as`` gives whether it was taken."""

    def __init__(self, name: str) -> None:
        self.name, self.acquired = name, False

    def __enter__(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [self.name])
            self.acquired = bool(cursor.fetchone()[0])
        return self.acquired

    def __exit__(self, *exc: object) -> None:
        if self.acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [self.name])


def _refit_due(version: ModelVersion) -> bool:
    """Whether a fitted encoder's catalogue has outgrown it: TF-IDF knows only the words of the items
    it was fitted on (the first version is built a second after the first batch), so an item of new
    words encodes to nothing (no vector: out of search, similar items and placement) and a query of
    them finds nothing. Rebuilt at RECSYS_CONTENT_REFIT_GROWTH × the items fitted on: a geometric
    series of builds, about twice the work of the last one in all."""
    growth = settings.RECSYS_CONTENT_REFIT_GROWTH
    if growth <= 0 or not encoder_learns(version.params.get("encoder", "")):
        return False
    fitted = int((version.counts or {}).get("items", 0))
    wanted = max(int(growth * fitted), fitted + 1)
    if wanted > EXACT_ITEMS_BELOW:  # the planner's estimate: counting millions on every sweep is not needed
        return vector_rows.row_estimate("recsys_item") >= wanted
    # Items with text only (stubs that events created have no words to learn), at most ``wanted`` read.
    return Item.objects.filter(is_stub=False)[:wanted].count() >= wanted


EXACT_ITEMS_BELOW = 100_000


def _failed_lately(config: dict[str, Any]) -> bool:
    """A build with these settings failed within RECSYS_CONTENT_RETRY_AFTER_FAILURE_SECONDS: one that
    cannot succeed (a model that is not there) would otherwise claim a new version every sweep."""
    since = timezone.now() - timedelta(seconds=settings.RECSYS_CONTENT_RETRY_AFTER_FAILURE_SECONDS)
    failed = ModelVersion.objects.filter(kind=Kind.CONTENT, status=Status.FAILED, params=config)
    # An outage (PostgreSQL or Redis away, a worker killed) says nothing of the settings: tried again.
    outage = Q(error__contains="its lease ran out")
    for name in OUTAGE_ERRORS:
        outage |= Q(error__startswith=f"{name}:")
    return failed.filter(finished_at__gte=since).exclude(outage).exists()


OUTAGE_ERRORS = ("OperationalError", "InterfaceError", "ServiceUnavailable", "RedisUnavailable", "ConnectionError")


def content_encode_schedule() -> bool:
    """Sweep about a second from now (one task however many batches arrive): changed items get
    encoded, and the very first items get a first version built. False when Redis is away: the
    beat sweep picks the items up instead."""
    from embeddings import tasks
    from recsys import redis_store

    key = redis_store.key(SCHEDULED_KEY)
    try:
        first = redis_store.run(lambda client: client.set(key, 1, nx=True, ex=DEBOUNCE_SECONDS))
        if first:
            transaction.on_commit(lambda: tasks.content_sweep.apply_async(countdown=DEBOUNCE_SECONDS))
    except Exception:  # Redis or the broker away: the sweep covers these items
        logger.warning("could not schedule content encoding", exc_info=True)
        return False
    return True


def content_sweep() -> dict[str, Any]:
    """The beat task: start building a first version, or a new one when the configured encoder
    changed or a fitted one's catalogue outgrew it (on the training queue); and encode whatever the
    active version has not seen, with its own encoder, while a build runs too."""
    from embeddings import tasks

    config = content_encoder_config()
    active = ActiveVersion.objects.select_related("version").defer("version__encoder_state").filter(kind=Kind.CONTENT)
    pointer = active.first()
    if pointer is None or pointer.version.params != config or _refit_due(pointer.version):
        if not Item.objects.exists() or _failed_lately(config):
            return {"building": None, "encoded": content_items_encode() if pointer else 0}
        try:
            version = content_version_create(config=config)
        except runs.TrainingAlreadyRunning:  # a build runs: new items still reach the served version
            return {"building": None, "encoded": content_items_encode() if pointer else 0}
        runs.run_enqueue(version_id=version.pk, task=tasks.content_model_build)
        return {"building": version.pk, "encoded": content_items_encode() if pointer else 0}
    encoded = content_items_encode()
    placed = 0
    if settings.RECSYS_COLD_ITEMS:
        from embeddings.cold_placement import cold_items_place

        placed = cold_items_place()  # items whose placement task was lost (broker away)
    return {"building": None, "encoded": encoded, "placed": placed}
