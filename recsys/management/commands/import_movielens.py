"""Import a MovieLens folder (ml-latest / ml-latest-small CSVs or the classic ml-100k files)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from recsys.errors import ValidationFailed
from recsys.ingestion.documents import ItemRow, items_load
from recsys.ingestion.events import interactions_load
from recsys.ingestion.readers import csv_events_read, data_lines, delimited_events_read
from recsys.ingestion.report import ImportReport, progress_bar
from recsys.ingestion.rules import RawEvents
from recsys.validation import MAX_TEXT_CHARS, MAX_TITLE_CHARS

NO_GENRES = {"(no genres listed)", "unknown"}  # ml-latest and ml-100k spell "no genre" these ways
RATINGS_RENAME = {"userId": "user", "movieId": "item", "rating": "value", "timestamp": "timestamp"}


def movie_text(title: str, genres: list[str], tags: list[str]) -> str:
    """What a text encoder reads: "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun"."""
    parts = [title]
    if genres:
        parts.append(f"Genres: {', '.join(genres)}")
    if tags:
        parts.append(f"Tags: {', '.join(tags)}")
    return ". ".join(parts)[:MAX_TEXT_CHARS]


def _movie(line: int, movie_id: str, title: str, genres: list[str], tags: list[str]) -> ItemRow:
    genres = [genre for genre in genres if genre and genre not in NO_GENRES]
    return ItemRow(movie_id, title[:MAX_TITLE_CHARS], movie_text(title, genres, tags), genres, line)


@dataclass(frozen=True)
class LatestFolder:
    """movies.csv (movieId,title,genres), ratings.csv (userId,movieId,rating,timestamp), tags.csv."""

    folder: Path

    def movies(self) -> Iterator[ItemRow]:
        tags = self._tags()
        with (self.folder / "movies.csv").open(newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), 2):
                movie_id = row["movieId"]
                yield _movie(line, movie_id, row["title"], row["genres"].split("|"), tags.get(movie_id, []))

    def _tags(self) -> dict[str, list[str]]:
        """Each movie's distinct tags (case-insensitively), in the order users first gave them."""
        path = self.folder / "tags.csv"
        tags: dict[str, dict[str, str]] = {}
        if path.exists():
            with path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    tag = row["tag"].strip()
                    tags.setdefault(row["movieId"], {}).setdefault(tag.lower(), tag)
        return {movie_id: list(distinct.values()) for movie_id, distinct in tags.items()}

    def ratings(self, limit: int | None) -> Iterator[RawEvents]:
        return csv_events_read(self.folder / "ratings.csv", rename=RATINGS_RENAME, event_type="rating", limit=limit)

    def ratings_path(self) -> Path:
        return self.folder / "ratings.csv"


@dataclass(frozen=True)
class ClassicFolder:
    """ml-100k: u.data (user item rating unixtime, tab-separated), u.item and u.genre (pipe-separated, latin-1)."""

    folder: Path

    def movies(self) -> Iterator[ItemRow]:
        genres = self._genres()
        with (self.folder / "u.item").open(newline="", encoding="latin-1") as handle:
            for line, row in enumerate(csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE), 1):
                if len(row) < 5:
                    continue  # a blank or truncated line
                flags = row[5:]
                names = [genres.get(k, "") for k, flag in enumerate(flags) if flag == "1"]
                yield _movie(line, row[0], row[1], names, [])

    def _genres(self) -> dict[int, str]:
        """u.genre lines are "name|index"."""
        path = self.folder / "u.genre"
        with path.open(encoding="latin-1") as handle:
            pairs = [line.strip().rsplit("|", 1) for line in handle if "|" in line]
        return {int(index): name for name, index in pairs}

    def ratings(self, limit: int | None) -> Iterator[RawEvents]:
        positions = {"user": 0, "item": 1, "value": 2, "timestamp": 3}
        return delimited_events_read(
            self.ratings_path(), positions=positions, event_type="rating", delimiter="\t", limit=limit
        )

    def ratings_path(self) -> Path:
        return self.folder / "u.data"


def movielens_folder(folder: Path) -> LatestFolder | ClassicFolder:
    if (folder / "movies.csv").exists() and (folder / "ratings.csv").exists():
        return LatestFolder(folder)
    if all((folder / name).exists() for name in ("u.data", "u.item", "u.genre")):
        return ClassicFolder(folder)
    raise CommandError(f"{folder} holds neither movies.csv + ratings.csv nor u.data + u.item + u.genre")


class Command(BaseCommand):
    help = (
        "Import MovieLens movies as items (title, genres as categories, tags in the text) and ratings as "
        "'rating' interactions. Re-running it changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="folder of ml-latest(-small) CSVs or of ml-100k files")
        parser.add_argument("--limit", type=int, help="import only the first N ratings (all movies are imported)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        source = movielens_folder(options["path"])
        limit = options["limit"]
        try:
            movies = items_load(rows=source.movies())
            self._report("movies", movies)
            total = limit or max(data_lines(source.ratings_path()) - isinstance(source, LatestFolder), 0)
            with progress_bar(total, disabled=options["no_progress"]) as bar:
                ratings = interactions_load(chunks=source.ratings(limit), progress=bar.update)
        except ValidationFailed as error:
            raise CommandError(error.message) from None
        self._report("ratings", ratings)

    def _report(self, what: str, report: ImportReport) -> None:
        self.stdout.write(report.summary(what))
        for line in report.rejection_lines():
            self.stdout.write(line)
