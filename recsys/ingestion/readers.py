"""Readers: CSV, delimited and JSON Lines files, and API batches, into columns of raw events."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np

from recsys.errors import ValidationFailed
from recsys.ingestion.rules import (
    EMPTY_EVENT,
    EVENT_FIELDS,
    REQUIRED_EVENT_FIELDS,
    EventTuple,
    Labels,
    RawEvents,
    Rejections,
    RowError,
    event_fields,
    plain_events_columns,
    recommendation_id_field,
)

T = TypeVar("T")

# Events per transaction. Measured importing 1M new events into a table of 2M (2-core VM, embedded
# PostgreSQL 16, 128 MB shared_buffers): 50k → 16.8k rows/s, 200k → 21.0k, 1M → 21.6k rows/s, at
# 140, 310 and 700 MB peak RSS. Each chunk revisits index pages spread over the whole table, so
# small chunks pay; past 200k the gain is 3% for twice the memory and a longer commit.
CHUNK_ROWS = 200_000
# A file's first chunk is smaller: nothing else runs while it is read and its new users and items are created
# (most of a file's are in its first rows), and the COPY thread starts once it is stored. Measured against
# 200,000: medians 8.2 -> 7.4 s for a fresh 1M-row month, within the noise of this shared machine (BENCHMARKS.md).
FIRST_CHUNK_ROWS = 50_000


def batch_events_read(rows: Sequence[object]) -> RawEvents:
    """The rows of an API batch (event objects); ``lines`` are their indexes in the batch."""
    return json_rows_events_read(list(range(len(rows))), rows)


def csv_events_read(
    path: Path,
    *,
    rename: dict[str, str] | None = None,
    event_type: str | None = None,
    limit: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    first_chunk_rows: int = FIRST_CHUNK_ROWS,
) -> Iterator[RawEvents]:
    """Chunks of a CSV file whose header names user, item, type and optionally value, timestamp (the first
    chunk no longer than ``first_chunk_rows``).

    ``rename`` maps other header names onto those; ``event_type`` stands in for a missing type column.
    """
    from recsys.ingestion import delimited  # pyarrow: loaded by file imports only (0.3 s, ~60 MB)

    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        names = next(csv.reader(handle), [])
    if not all(map(utf8, names)):
        raise ValidationFailed("the CSV header is not UTF-8 text", details={"header": ["not UTF-8"]})
    header = [(rename or {}).get(name.strip(), name.strip().lower()) for name in names]
    positions = _header_positions(header, has_type=event_type is not None)
    layout = delimited.Layout(path, positions, len(header), ",", "utf-8-sig", header_rows=1)
    first_rows = min(first_chunk_rows, chunk_rows)
    yield from delimited.delimited_read(
        layout, event_type=event_type, limit=limit, chunk_rows=chunk_rows, first_rows=first_rows
    )


def delimited_events_read(
    path: Path,
    *,
    positions: dict[str, int],
    event_type: str | None = None,
    delimiter: str = ",",
    limit: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[RawEvents]:
    """Chunks of a header-less delimited file whose columns are at known ``positions``."""
    from recsys.ingestion import delimited  # pyarrow: loaded by file imports only

    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:  # (rows are checked later)
        first = next(csv.reader(handle, delimiter=delimiter), [])
    width = max(positions.values()) + 1
    layout = delimited.Layout(path, positions, width, delimiter, "utf-8", header_rows=0, fields=max(width, len(first)))
    yield from delimited.delimited_read(layout, event_type=event_type, limit=limit, chunk_rows=chunk_rows)


def jsonl_events_read(path: Path, *, limit: int | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawEvents]:
    """Chunks of a JSON Lines file of interaction objects shaped as in the API (blank lines skipped)."""
    # Bytes that are not UTF-8 reach the line's check as lone surrogates: that line is refused, not the file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
        numbered = ((line, text) for line, text in enumerate(handle, 1) if text.strip())
        for batch in batches(islice(numbered, limit), chunk_rows):
            lines = [line for line, _ in batch]
            yield json_rows_events_read(lines, [_json_line(text) for _, text in batch])


def utf8(text: str) -> bool:
    """Whether text read with ``errors="surrogateescape"`` was UTF-8 (no byte became a surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Unreadable:
    """A line that is not JSON: ``json_rows_events_read`` rejects it with its error."""

    def __init__(self, error: RowError) -> None:
        self.error = error


def _json_line(text: str) -> object:
    if not utf8(text):
        return _Unreadable(RowError("not UTF-8", text.encode("utf-8", "surrogateescape"), problem="not UTF-8"))
    try:
        return json.loads(text)
    except ValueError:  # not JSON, or an integer of more digits than Python converts
        return _Unreadable(RowError("invalid JSON", text, problem="invalid JSON"))
    except RecursionError:  # nesting deeper than the parser's stack
        return _Unreadable(RowError("invalid JSON", "nested too deeply", problem="invalid JSON"))


def json_rows_events_read(lines: Sequence[int], rows: Sequence[object]) -> RawEvents:
    """Event objects as the API takes them (from a batch, a JSON Lines file or a data set export);
    ``lines`` numbers them in reports. A batch of well-formed objects is read a column at a time."""
    columns = plain_events_columns(rows)
    if columns is not None:
        users, items, types, values, stamps, recommendation_ids = columns
        return RawEvents(
            lines, Labels.of(users), Labels.of(items), Labels.of(types), values, stamps, {}, recommendation_ids
        )
    return json_rows_events_read_each(lines, rows)


def json_rows_events_read_each(lines: Sequence[int], rows: Sequence[object]) -> RawEvents:
    """``json_rows_events_read`` a row at a time, each row's problem found (any batch)."""
    events: list[EventTuple] = []
    recommendation_ids: list[str | None] = []
    errors: Rejections = {}
    for k, row in enumerate(rows):
        try:
            if isinstance(row, _Unreadable):
                raise row.error
            event = event_fields(row)  # checks that row is an object
            recommendation_id = recommendation_id_field(row)  # type: ignore[arg-type]
        except RowError as error:
            errors[k] = error
            event, recommendation_id = EMPTY_EVENT, None
        events.append(event)
        recommendation_ids.append(recommendation_id)
    users, items, types, values, stamps = zip(*events, strict=True) if events else ((), (), (), (), ())
    return RawEvents(
        lines,
        Labels.of(users),
        Labels.of(items),
        Labels.of(types),
        np.array(values, dtype=np.float64),
        np.array(stamps, dtype=np.int64),
        errors,
        recommendation_ids if any(recommendation_ids) else None,
    )


# ---- delimited files ------------------------------------------------------------------------------


def _header_positions(header: list[str], *, has_type: bool) -> dict[str, int]:
    unknown = sorted(set(header) - EVENT_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown CSV column(s): {', '.join(unknown)}; known: {', '.join(sorted(EVENT_FIELDS))}")
    missing = [name for name in REQUIRED_EVENT_FIELDS if name not in header and not (has_type and name == "type")]
    if missing:
        raise ValidationFailed(f"the CSV header needs column(s): {', '.join(missing)}")
    return {name: header.index(name) for name in header}


# ---- chunking ------------------------------------------------------------------------------------


def batches(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def read_ahead(chunks: Iterable[T]) -> Iterator[T]:
    """Read and check the next chunk on a thread while the database stores this one: two cores, two jobs."""
    iterator = iter(chunks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-read") as pool:
        pending = pool.submit(next, iterator, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, iterator, None)
            yield chunk


def data_lines(path: Path) -> int:
    """Lines in a file, counted in 1 MiB blocks (a progress bar's total)."""
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
