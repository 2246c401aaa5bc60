"""Start, stop or inspect the embedded PostgreSQL and Redis under the project's data folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from recsys import embedded


class Command(BaseCommand):
    help = (
        "The embedded services used when DATABASE_URL / REDIS_URL are unset: `status` reports "
        "(and changes nothing), `start` starts them and leaves them running, `stop` stops them."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "start", "stop"])

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir: Path = settings.DATA_DIR
        if options["action"] == "stop":
            stopped = embedded.stop(data_dir)
            self.stdout.write(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return
        if options["action"] == "start":
            data_dir.mkdir(parents=True, exist_ok=True)
            if not os.environ.get("DATABASE_URL"):
                embedded.postgres_url(data_dir)
            if not os.environ.get("REDIS_URL"):
                embedded.redis_url(data_dir)
        database = _describe("DATABASE_URL", embedded.postgres_running(data_dir), embedded.postgres_address(data_dir))
        redis = _describe("REDIS_URL", embedded.redis_running(data_dir), embedded.redis_address(data_dir))
        self.stdout.write(f"database: {database}\nredis:    {redis}")


def _describe(variable: str, embedded_running: bool, embedded_url: str) -> str:
    if os.environ.get(variable):
        return f"{os.environ[variable]} (external, from {variable})"
    if embedded_running:
        return f"{embedded_url} (embedded, running)"
    return "embedded, not running (`make services-start` starts it)"
