"""Celery entry points of the core: the interaction partitions' upkeep."""

from __future__ import annotations

from celery import shared_task

from recsys import partitions


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def interaction_partitions_maintain() -> dict[str, list[str]]:
    """Beat, hourly: months ahead created, DEFAULT split, expired months dropped. Idempotent."""
    return partitions.partitions_maintain()
