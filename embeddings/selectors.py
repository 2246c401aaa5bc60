"""Reads of model versions and their state."""

from __future__ import annotations

from embeddings.models import ActiveVersion, Kind, ModelVersion


def active_version(*, kind: str) -> ModelVersion | None:
    pointer = ActiveVersion.objects.select_related("version").filter(kind=kind).first()
    return pointer.version if pointer else None


def active_versions_summary() -> dict[str, dict[str, object] | None]:
    """For the health report: per kind, the active version's number, algorithm and dimensions."""
    summary: dict[str, dict[str, object] | None] = {kind: None for kind in Kind.values}
    for pointer in ActiveVersion.objects.select_related("version"):
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
