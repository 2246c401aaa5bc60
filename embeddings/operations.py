"""Operator actions on model versions (train now, roll back) and the reads behind the models page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from embeddings import content, runs, services, tasks
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from recsys.errors import ModelNotReady, ValidationFailed

SERVABLE = (Status.READY, Status.RETIRED, Status.ACTIVE)


def training_start(*, kind: str) -> ModelVersion:
    """Claim a run of ``kind`` and send it to the training queue, as ``POST /models/train`` does.

    Raises TrainingAlreadyRunning while another run holds the lease, ServiceUnavailable when the
    broker is away (the claim is then released as failed). The one place that tells the kinds apart.
    """
    if kind == Kind.CONTENT:
        version, task = content.content_version_create(), tasks.content_model_build
    elif kind == Kind.COLLABORATIVE:
        version, task = services.collaborative_version_create(), tasks.collaborative_model_train
    else:
        raise ValidationFailed(f"kind must be one of {', '.join(Kind.values)}")
    runs.run_enqueue(version_id=version.pk, task=task)
    version.refresh_from_db()
    return version


def rollback_target(*, kind: str) -> ModelVersion | None:
    """The newest servable version of ``kind`` older than the active one (None: nothing to go back to)."""
    active = ActiveVersion.objects.filter(kind=kind).values_list("version_id", flat=True).first()
    if active is None:
        return None
    return (
        ModelVersion.objects.filter(kind=kind, pk__lt=active, has_tables=True, status__in=SERVABLE)
        .order_by("-pk")
        .first()
    )


def model_version_rollback(*, kind: str) -> ModelVersion:
    """Serve the previous servable version of ``kind`` again."""
    target = rollback_target(kind=kind)
    if target is None:
        raise ModelNotReady(f"no older {kind} version with vectors to roll back to")
    return runs.model_version_activate(version_id=target.pk)


def ndcg_history(*, limit: int = 50) -> list[dict[str, Any]]:
    """NDCG@10 of the newest collaborative versions that were evaluated, oldest first, against
    popularity on the same split (the models page's chart)."""
    rows = (
        ModelVersion.objects.filter(kind=Kind.COLLABORATIVE, metrics__has_key="ndcg@10")
        .order_by("-pk")
        .values("pk", "algorithm", "status", "metrics", "baseline_metrics")[:limit]
    )
    return [
        {
            "version": row["pk"],
            "algorithm": row["algorithm"],
            "status": row["status"],
            "ndcg": round(float(row["metrics"]["ndcg@10"]), 5),
            "baseline": round(float((row["baseline_metrics"] or {}).get("ndcg@10", 0.0)), 5),
        }
        for row in reversed(list(rows))
    ]


def model_versions_by_id(*, ids: list[int]) -> dict[int, ModelVersion]:
    return {v.pk: v for v in ModelVersion.objects.filter(pk__in=ids).only("pk", "kind", "algorithm", "status")}


def active_pointers() -> list[ActiveVersion]:
    return list(ActiveVersion.objects.order_by("kind"))


def versions_training() -> bool:
    """Whether any run is in progress (the models page then refreshes itself)."""
    return ModelVersion.objects.filter(status=Status.TRAINING).exists()


def versions_in_grace(*, kind: str, keep: int) -> list[int]:
    """Versions past the newest ``keep`` that keep their tables only because they served within
    RECSYS_PRUNE_GRACE_SECONDS (``runs.model_versions_prune``), newest first."""
    recent = timezone.now() - timedelta(seconds=settings.RECSYS_PRUNE_GRACE_SECONDS)
    return [
        pk for pk, deactivated in runs.prune_candidates(kind=kind, keep=keep) if deactivated and deactivated > recent
    ]
