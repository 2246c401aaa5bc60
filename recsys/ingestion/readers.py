"""Readers: CSV, delimited and JSON Lines files, and API batches, into columns of raw events."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TypeVar

import numpy as np

from recsys.errors import ValidationFailed
from recsys.ingestion.rules import (
    EMPTY_EVENT,
    EVENT_FIELDS,
    NO_TIMESTAMP,
    REQUIRED_EVENT_FIELDS,
    TIMESTAMP_RANGE,
    US,
    EventTuple,
    Floats,
    Ints,
    RawEvents,
    Rejections,
    RowError,
    event_fields,
    iso_micros,
    plain_events_columns,
    recommendation_id_field,
)

T = TypeVar("T")

# Events per transaction. Measured importing 1M new events into a table of 2M (2-core VM, embedded
# PostgreSQL 16, 128 MB shared_buffers): 50k → 16.8k rows/s, 200k → 21.0k, 1M → 21.6k rows/s, at
# 140, 310 and 700 MB peak RSS. Each chunk revisits index pages spread over the whole table, so
# small chunks pay; past 200k the gain is 3% for twice the memory and a longer commit.
CHUNK_ROWS = 200_000


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
) -> Iterator[RawEvents]:
    """Chunks of a CSV file whose header names user, item, type and optionally value, timestamp.

    ``rename`` maps other header names onto those; ``event_type`` stands in for a missing type column.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [(rename or {}).get(name.strip(), name.strip().lower()) for name in next(reader, [])]
        positions = _header_positions(header, has_type=event_type is not None)
        yield from _delimited_chunks(reader, positions, len(header), 2, event_type, limit, chunk_rows)


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
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        width = max(positions.values()) + 1
        yield from _delimited_chunks(reader, positions, width, 1, event_type, limit, chunk_rows)


def jsonl_events_read(path: Path, *, limit: int | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawEvents]:
    """Chunks of a JSON Lines file of interaction objects shaped as in the API (blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        numbered = ((line, text) for line, text in enumerate(handle, 1) if text.strip())
        for batch in batches(islice(numbered, limit), chunk_rows):
            lines = [line for line, _ in batch]
            yield json_rows_events_read(lines, [_json_line(text) for _, text in batch])


class _Unreadable:
    """A line that is not JSON: ``json_rows_events_read`` rejects it with its error."""

    def __init__(self, error: RowError) -> None:
        self.error = error


def _json_line(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _Unreadable(RowError("invalid JSON", text, problem="invalid JSON"))
    except RecursionError:  # nesting deeper than the parser's stack
        return _Unreadable(RowError("invalid JSON", "nested too deeply", problem="invalid JSON"))


def json_rows_events_read(lines: Sequence[int], rows: Sequence[object]) -> RawEvents:
    """Event objects as the API takes them (from a batch, a JSON Lines file or a data set export);
    ``lines`` numbers them in reports. A batch of well-formed objects is read a column at a time."""
    columns = plain_events_columns(rows)
    if columns is not None:
        users, items, types, values, stamps, recommendation_ids = columns
        return RawEvents(lines, users, items, types, values, stamps, {}, recommendation_ids)
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
        list(users),
        list(items),
        list(types),
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


def _delimited_chunks(
    reader: Iterator[list[str]],
    positions: dict[str, int],
    width: int,
    first_line: int,
    event_type: str | None,
    limit: int | None,
    chunk_rows: int,
) -> Iterator[RawEvents]:
    for rows in batches(islice(reader, limit), chunk_rows):
        yield _rows_events(rows, positions, width, range(first_line, first_line + len(rows)), event_type)
        first_line += len(rows)


def _rows_events(
    rows: list[list[str]], positions: dict[str, int], width: int, lines: range, event_type: str | None
) -> RawEvents:
    errors: Rejections = {}
    for position in [k for k, row in enumerate(rows) if len(row) < width]:
        errors[position] = RowError(f"expected {width} fields", f"got {len(rows[position])}", problem="too few fields")
        rows[position] = [""] * width

    def column(name: str) -> list[str]:
        return list(map(itemgetter(positions[name]), rows)) if name in positions else [""] * len(rows)

    values, value_errors = values_parse(column("value"))
    timestamps, timestamp_errors = timestamps_parse(column("timestamp"))
    types = [event_type] * len(rows) if event_type else column("type")
    recommendation_ids = None
    if "recommendation_id" in positions:
        recommendation_ids, id_errors = recommendation_ids_parse(column("recommendation_id"))
        errors = {**id_errors, **errors}
    errors = {**timestamp_errors, **value_errors, **errors}
    return RawEvents(lines, column("user"), column("item"), types, values, timestamps, errors, recommendation_ids)


def recommendation_ids_parse(texts: list[str]) -> tuple[list[str | None], Rejections]:
    """A file's recommendation id column: '' means none."""
    ids: list[str | None] = []
    errors: Rejections = {}
    for k, text in enumerate(texts):
        try:
            ids.append(recommendation_id_field({"recommendation_id": text or None}))
        except RowError as error:
            errors[k] = error
            ids.append(None)
    return ids, errors


def values_parse(texts: list[str]) -> tuple[Floats, Rejections]:
    """Text → float64; '' means no value (NaN); anything else must be a finite number."""
    try:
        values = np.array(texts, dtype=np.float64)  # all rows have a value: parsed in C
    except ValueError:
        values = np.array([_float_or_nan(text) for text in texts], dtype=np.float64)
    errors = {
        int(k): RowError("value must be a finite number", texts[k], fields=("value",), problem="not a finite number")
        for k in np.flatnonzero(~np.isfinite(values))
        if texts[k]
    }
    return values, errors


def _float_or_nan(text: str) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.inf  # reported as not a finite number


def timestamps_parse(texts: list[str]) -> tuple[Ints, Rejections]:
    """Unix seconds or ISO 8601 with a zone → microseconds since the epoch; '' → NO_TIMESTAMP."""
    try:
        seconds = np.array(texts, dtype=np.int64)  # whole unix seconds: parsed in C
        return np.clip(seconds, -(10**12), 10**12) * US, {}  # clipped: out of range stays out of range
    except (ValueError, OverflowError):
        pass
    try:
        return _iso_column_micros(texts), {}
    except (ValueError, OverflowError):
        return _timestamps_parse_each(texts)


def _iso_column_micros(texts: list[str]) -> Ints:
    """All ISO 8601 with a zone (raises ValueError or OverflowError otherwise): 3x faster than row by row."""
    moments = list(map(datetime.fromisoformat, texts))
    if any(moment.tzinfo is None for moment in moments):
        raise ValueError("a timestamp without a zone")
    seconds = np.fromiter(map(datetime.timestamp, moments), dtype=np.float64, count=len(moments))
    return np.round(seconds * US).astype(np.int64)  # exact: the float's error is far below 0.5 µs


def _timestamps_parse_each(texts: list[str]) -> tuple[Ints, Rejections]:
    micros: list[int] = []
    errors: Rejections = {}
    for k, text in enumerate(texts):
        try:
            micros.append(timestamp_micros(text))
        except RowError as error:
            errors[k] = error
            micros.append(NO_TIMESTAMP)
    return np.array(micros, dtype=np.int64), errors


def timestamp_micros(text: str) -> int:
    """One timestamp as unix seconds or ISO 8601 with a zone → microseconds since the epoch."""
    if not text:
        return NO_TIMESTAMP
    try:
        seconds = float(text)
    except ValueError:
        return iso_micros(text)
    if not math.isfinite(seconds) or abs(seconds) > 1e12:
        raise RowError(TIMESTAMP_RANGE, text, fields=("timestamp",), problem="out of range")
    return round(seconds * US)


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
