"""Import interactions from a CSV or JSON Lines file through the bulk loader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from recsys.errors import ValidationFailed
from recsys.ingestion.events import interactions_load
from recsys.ingestion.readers import csv_events_read, data_lines, jsonl_events_read
from recsys.ingestion.report import progress_bar
from recsys.ingestion.rules import RawEvents

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise CommandError(
            f"cannot tell the format of {path.name}; name it .csv, .jsonl or .ndjson, or pass --format"
        ) from None


def events_read(path: Path, form: str, limit: int | None) -> Iterator[RawEvents]:
    if form == "csv":
        return csv_events_read(path, limit=limit)
    return jsonl_events_read(path, limit=limit)


class Command(BaseCommand):
    # The system checks import every URL, view and schema module (~1 s of CPU) and judge nothing an import uses.
    requires_system_checks: list[str] = []
    help = (
        "Import interactions from CSV (header: user,item,type[,value][,timestamp]; timestamps ISO 8601 with a "
        "zone or unix seconds) or JSON Lines (objects as in POST /interactions). Unknown users are created, "
        "unknown items too (as stubs) unless --no-create-items or RECSYS_AUTO_CREATE_ITEMS=false. Rows without "
        "a timestamp get the import's start time. Bad rows are reported and skipped; re-running changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=sorted(set(FORMATS.values())), help="default: from the extension")
        parser.add_argument("--no-create-items", action="store_true", help="reject rows whose item does not exist")
        parser.add_argument("--limit", type=int, help="import only the first N rows")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file")
        form = file_format(path, options["format"])
        create_items = settings.RECSYS_AUTO_CREATE_ITEMS and not options["no_create_items"]
        # Counting the lines reads the whole file once more: only for a bar that is shown.
        total = None if options["no_progress"] else options["limit"] or data_lines(path) - (form == "csv")
        try:
            with progress_bar(total, disabled=options["no_progress"]) as bar:
                report = interactions_load(
                    chunks=events_read(path, form, options["limit"]), create_items=create_items, progress=bar.update
                )
        except ValidationFailed as error:
            raise CommandError(error.message) from None
        self.stdout.write(report.summary("interactions"))
        for line in report.rejection_lines():
            self.stdout.write(line)
