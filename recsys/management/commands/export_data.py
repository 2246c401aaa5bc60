"""Export the whole data set as JSON Lines, to a file (gzip when it ends in .gz) or to stdout."""

from __future__ import annotations

import gzip
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandParser

from recsys.dataset_export import dataset_export

# gzip level 1: JSON Lines shrink ~6x at level 1 and hardly more at 9, which is several times slower.
GZIP_LEVEL = 1


class Command(BaseCommand):
    help = (
        "Write event types, users, items (with attributes; stubs flagged), custom-space vectors and interactions "
        "as one JSON Lines stream, one object with a 'kind' per line, between a header and an end line with the "
        "counts. PATH '-' writes to stdout; a PATH ending in .gz is gzip-compressed. Streams from one snapshot "
        "of the database: memory stays flat at any size. Model versions are not exported (retrain after import)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="file to write, or - for stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        if options["path"] == "-":
            lines, written = _write(sys.stdout.buffer)
        else:
            lines, written = _write_file(Path(options["path"]))
        seconds = time.perf_counter() - started
        rate = lines / seconds if seconds else 0.0
        self.stderr.write(f"exported {lines:,} lines ({written:,} bytes) in {seconds:.2f} s ({rate:,.0f} lines/s)")


def _write(out: IO[bytes]) -> tuple[int, int]:
    lines = written = 0
    for chunk in dataset_export():
        out.write(chunk)
        lines += chunk.count(b"\n")
        written += len(chunk)
    out.flush()
    return lines, written


def _write_file(path: Path) -> tuple[int, int]:
    """Written beside the target and renamed when complete, so a failed export leaves no file that
    looks like a backup."""
    partial = path.with_name(path.name + ".partial")
    try:
        gzipped = path.suffix == ".gz"
        with gzip.open(partial, "wb", compresslevel=GZIP_LEVEL) if gzipped else partial.open("wb") as out:
            counted = _write(out)  # type: ignore[arg-type]
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return counted
