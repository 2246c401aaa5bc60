"""``manage.py experiment_metrics``: compute the experiments' metrics now (beat does it every minute)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from experiments.metrics import experiments_metrics_compute


class Command(BaseCommand):
    help = "Compute a metrics snapshot of every running (or just stopped) experiment now."

    def handle(self, *args: Any, **options: Any) -> None:
        done = experiments_metrics_compute()
        self.stdout.write(f"metrics computed for experiments {done or 'none (nothing running)'}")
