"""Reads of model versions and their state."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings

from embeddings.models import ActiveVersion, Kind, ModelVersion, VectorSpace
from embeddings.vectors.rows import vector_written


def active_version(*, kind: str) -> ModelVersion | None:
    pointer = ActiveVersion.objects.select_related("version").filter(kind=kind).first()
    return pointer.version if pointer else None


_serving_lock = threading.Lock()
_serving: dict[str, tuple[float, ModelVersion | None]] = {}


def active_version_serving(*, kind: str) -> ModelVersion | None:
    """The version serving ``kind`` (with vectors), re-read from the database at most every
    RECSYS_ACTIVE_VERSION_CACHE_SECONDS: a request starts with one read of this, not a query."""
    now = time.monotonic()
    with _serving_lock:
        cached = _serving.get(kind)
    if cached is not None and now - cached[0] < settings.RECSYS_ACTIVE_VERSION_CACHE_SECONDS:
        return cached[1]
    pointer = (
        ActiveVersion.objects.select_related("version")
        .filter(kind=kind, version__has_tables=True)
        # The Gram matrix (d x d JSON) loads only when a fold-in needs it.
        .defer(
            "version__item_gram",
            "version__encoder_state",
            "version__centroids",
            "version__progress",
            "version__metrics",
            "version__baseline_metrics",
        )
        .first()
    )
    version = pointer.version if pointer else None
    with _serving_lock:
        _serving[kind] = (now, version)
    return version


def active_version_serving_forget() -> None:
    """Forget the cached pointers (after a switch in this process, or a version's tables vanished)."""
    with _serving_lock:
        _serving.clear()


def active_versions_summary() -> dict[str, dict[str, object] | None]:
    """For the health report: per kind, the active version's number, algorithm and dimensions."""
    summary: dict[str, dict[str, object] | None] = {kind: None for kind in Kind.values}
    # Only what the health report shows: the versions' encoder state and Gram matrix are megabytes.
    fields = ("kind", "activated_at", "version__id", "version__algorithm", "version__dimensions")
    for pointer in ActiveVersion.objects.select_related("version").only(*fields):
        version = pointer.version
        summary[pointer.kind] = {
            "version": version.pk,
            "algorithm": version.algorithm,
            "dimensions": version.dimensions,
            "activated_at": pointer.activated_at.isoformat(),
        }
    return summary


def model_versions_list(*, kind: str | None = None, limit: int = 50) -> list[ModelVersion]:
    versions = ModelVersion.objects.all()
    if kind:
        versions = versions.filter(kind=kind)
    return list(versions.order_by("-id")[:limit])


def item_vectors_status(*, item_id: int) -> dict[str, dict[str, Any]]:
    """Per space, the active version holding a vector of this item and when it was written (and,
    for content, the item's cluster in that version)."""
    status: dict[str, dict[str, Any]] = {}
    pointers = ActiveVersion.objects.select_related("version").filter(version__has_tables=True)
    for pointer in pointers.only("kind", "version__id", "version__kind"):
        written = vector_written(
            table=pointer.version.item_table, item_id=item_id, with_cluster=pointer.kind == Kind.CONTENT
        )
        if written:
            status[pointer.kind] = {"version": pointer.version_id, "updated_at": written[0]}
            if written[1] is not None:
                status[pointer.kind]["cluster"] = written[1]  # the k-means cluster: a hint for filters
    for space in VectorSpace.objects.all():
        written = vector_written(table=space.table, item_id=item_id, with_cluster=False)
        if written:
            status[space.name] = {"version": None, "updated_at": written[0]}
    return status
