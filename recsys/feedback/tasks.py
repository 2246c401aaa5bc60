"""Celery entry points for feedback: thin wrappers around ``recsys.feedback`` services."""

from __future__ import annotations

from celery import shared_task

from recsys.feedback.partitions import impression_partitions_maintain as partitions_maintain


@shared_task(acks_late=True, soft_time_limit=120, time_limit=180)
def impression_partitions_maintain() -> dict[str, list[str]]:
    """Beat (hourly): create the coming months' impression partitions, drop the expired ones. Idempotent."""
    report = partitions_maintain()
    return {"created": [m.isoformat() for m in report.created], "dropped": [m.isoformat() for m in report.dropped]}
