"""Reads of model versions and their state."""

from __future__ import annotations

from typing import Any

from django.db import connection
from psycopg import sql

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


def item_vectors_status(*, item_id: int) -> dict[str, dict[str, Any]]:
    """Per space, the active version holding a vector of this item and when it was written."""
    status: dict[str, dict[str, Any]] = {}
    pointers = ActiveVersion.objects.select_related("version").filter(version__has_tables=True)
    with connection.cursor() as cursor:
        for pointer in pointers:
            query = sql.SQL("SELECT updated_at FROM {table} WHERE item_id = %s").format(
                table=sql.Identifier(pointer.version.item_table)
            )
            cursor.execute(query.as_string(connection.connection), [item_id])
            row = cursor.fetchone()
            if row:
                status[pointer.kind] = {"version": pointer.version_id, "updated_at": row[0]}
    return status
