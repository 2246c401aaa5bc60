"""Start, stop or inspect the embedded PostgreSQL and Redis under the project's data folder."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from recsys import embedded


class Command(BaseCommand):
    help = "Manage the embedded services used when DATABASE_URL / REDIS_URL are unset."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "start", "stop"])

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = settings.DATA_DIR
        if options["action"] == "stop":
            stopped = embedded.stop(data_dir)
            self.stdout.write(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return
        # Loading settings has already started whatever embedded service is configured.
        self.stdout.write(f"database: {_describe(settings.DATABASE_URL, embedded.postgres_running(data_dir))}")
        self.stdout.write(f"redis:    {_describe(settings.REDIS_URL, embedded.redis_running(data_dir))}")


def _describe(url: str, embedded_running: bool) -> str:
    return f"{url} ({'embedded, running' if embedded_running else 'external'})"
