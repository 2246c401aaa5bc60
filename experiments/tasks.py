"""Celery entry points of experiments: thin wrappers around the metrics service."""

from __future__ import annotations

from celery import shared_task


@shared_task(soft_time_limit=240, time_limit=300)
def experiment_metrics_compute() -> list[int]:
    """Beat: a metrics snapshot per variant of every running (or just stopped) experiment."""
    from experiments.metrics import experiments_metrics_compute

    return experiments_metrics_compute()
