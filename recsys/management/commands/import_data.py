"""Import a data set written by export_data (JSON Lines, gzip when the name ends in .gz; - reads stdin)."""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from recsys.dataset_import import dataset_import
from recsys.errors import ValidationFailed
from recsys.ingestion.report import progress_bar

PROGRESS_EVERY = 10_000  # lines between progress bar updates


class Command(BaseCommand):
    help = (
        "Load a JSON Lines data set (export_data's format: one object with a 'kind' per line) through the "
        "ingestion paths: users and items are upserted by id, interactions stored once per (user, item, type, "
        "timestamp), custom vectors put into their spaces. Bad lines are reported and skipped; re-running "
        "changes nothing. Train models afterwards (POST /api/v1/models/train)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="file to read (.jsonl or .jsonl.gz), or - for stdin")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["path"]
        if path != "-" and not Path(path).is_file():
            raise CommandError(f"{path} is not a file")
        with _opened(path) as handle, progress_bar(None, disabled=options["no_progress"]) as bar:
            try:
                report = dataset_import(lines=_counted(handle, bar.update))
            except ValidationFailed as error:
                raise CommandError(error.message) from None
        for line in report.summary_lines():
            self.stdout.write(line)


def _opened(path: str) -> IO[str]:
    # A byte that is not UTF-8 becomes a lone surrogate, and its line is refused (dataset_import), not the file.
    encoding, errors = "utf-8-sig", "surrogateescape"
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding=encoding, errors=errors)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors=errors)
    return Path(path).open(encoding=encoding, errors=errors)


def _counted(lines: IO[str], update: Any) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if number % PROGRESS_EVERY == 0:
            update(PROGRESS_EVERY)
        yield line
