"""Bulk imports: files → COPY into temporary staging tables → set-based upserts of users, items and events."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from django.db import connection
from psycopg.types.json import Jsonb
from tqdm import tqdm

from recsys.db import atomic_with_retry
from recsys.errors import ValidationFailed
from recsys.models import EventType, Item, User
from recsys.validation import (
    INTERACTION_FIELDS,
    MAX_CLOCK_SKEW,
    clean_attributes,
    clean_external_id,
    clean_item_fields,
    is_external_id,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Progress = Callable[[int], None]

# Events per transaction. Measured importing 1M new events into a table of 2M (2-core VM, embedded
# PostgreSQL 16, 128 MB shared_buffers): 50k → 16.8k rows/s, 200k → 21.0k, 1M → 21.6k rows/s, at
# 140, 310 and 700 MB peak RSS. Each chunk revisits index pages spread over the whole table, so
# small chunks pay; past 200k the gain is 3% for twice the memory and a longer commit.
CHUNK_ROWS = 200_000
# Items carry up to 100k characters of text each; 10k per chunk bounds memory, and the per-chunk
# overhead is negligible next to the full-text and GIN index work per item.
ITEM_CHUNK_ROWS = 10_000
MAX_EXAMPLES = 20
MAX_VALUE = 1e9
NO_TIMESTAMP = np.iinfo(np.int64).min  # the row has none: the import's start time stands in, as in the API
_US = 1_000_000
_MAX_SKEW_US = MAX_CLOCK_SKEW // timedelta(microseconds=1)
_PG_EPOCH_US = 946_684_800 * _US  # binary COPY counts timestamps from 2000-01-01


class RowError(ValueError):
    """A row that cannot be read; ``reason`` is counted, ``detail`` shows the offending text."""

    def __init__(self, reason: str, detail: object = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = str(detail)[:60]


Rejections = dict[int, RowError]  # position in a chunk → why the row is rejected


@dataclass
class ImportReport:
    """What an import did: ``created + updated + unchanged + rejected == rows``."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    users_created: int = 0
    items_created: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def reject(self, line: int, error: RowError) -> None:
        self.rejected += 1
        self.reasons[error.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"line {line}: {error.reason}" + (f" ({error.detail!r})" if error.detail else ""))

    def count(self, accepted: int, created: int, updated: int) -> None:
        self.created += created
        self.updated += updated
        self.unchanged += accepted - created - updated  # already stored, or repeated within the file

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self, what: str) -> str:
        line = (
            f"{what}: {self.rows:,} rows in {self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s): "
            f"{self.created:,} created, {self.updated:,} updated, {self.unchanged:,} unchanged, "
            f"{self.rejected:,} rejected"
        )
        if self.users_created or self.items_created:
            line += f"; new users {self.users_created:,}, new stub items {self.items_created:,}"
        return line

    def rejection_lines(self) -> list[str]:
        if not self.rejected:
            return []
        counts = ", ".join(f"{n:,} {reason}" for reason, n in self.reasons.most_common())
        return [f"rejected {self.rejected:,} rows: {counts}", *(f"  {example}" for example in self.examples)]


# ---- event types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRules:
    """The event types as arrays: an event's ``code`` indexes ``names`` (sorted, like the unique index)."""

    names: tuple[str, ...]
    weights: Floats
    uses_value: npt.NDArray[np.bool_]

    @classmethod
    def load(cls) -> EventRules:
        types = list(EventType.objects.order_by("name"))
        return cls(
            names=tuple(t.name for t in types),
            weights=np.array([t.weight for t in types], dtype=np.float64),
            uses_value=np.array([t.uses_value for t in types], dtype=bool),
        )

    def codes(self, names: Sequence[str | None]) -> npt.NDArray[np.int16]:
        """Each name's code, -1 for an unknown type."""
        index = {name: code for code, name in enumerate(self.names)}
        return np.array([index.get(name, -1) for name in names], dtype=np.int16)  # type: ignore[arg-type]

    def needs_value(self, codes: npt.NDArray[np.int16]) -> npt.NDArray[np.bool_]:
        return np.append(self.uses_value, False)[codes]  # code -1 (unknown type) lands on the False

    def weights_of(self, codes: npt.NDArray[np.int16], values: Floats) -> Floats:
        """EventType.weight_of, vectorised: the type's weight, times the value where the type uses it."""
        return self.weights[codes] * np.where(self.uses_value[codes], values, 1.0)


# ---- reading files -------------------------------------------------------------------------


@dataclass
class RawEvents:
    """Events as read from a file, column by column, with the rows already found unreadable."""

    lines: Sequence[int]  # the file line of each row, for reports
    users: Sequence[str | None]
    items: Sequence[str | None]
    types: Sequence[str | None]
    values: Floats  # NaN where the row has no value
    timestamps: Ints  # microseconds since the epoch; NO_TIMESTAMP where the row has none
    errors: Rejections = field(default_factory=dict)


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


def _header_positions(header: list[str], *, has_type: bool) -> dict[str, int]:
    unknown = sorted(set(header) - INTERACTION_FIELDS)
    if unknown:
        raise ValidationFailed(
            f"unknown CSV column(s): {', '.join(unknown)}; known: {', '.join(sorted(INTERACTION_FIELDS))}"
        )
    missing = [name for name in ("user", "item", "type") if name not in header and not (has_type and name == "type")]
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
    for rows in _batches(islice(reader, limit), chunk_rows):
        yield _rows_events(rows, positions, width, range(first_line, first_line + len(rows)), event_type)
        first_line += len(rows)


def _rows_events(
    rows: list[list[str]], positions: dict[str, int], width: int, lines: range, event_type: str | None
) -> RawEvents:
    errors: Rejections = {}
    for position in [k for k, row in enumerate(rows) if len(row) < width]:
        errors[position] = RowError(f"expected {width} fields", f"got {len(rows[position])}")
        rows[position] = [""] * width

    def column(name: str) -> list[str]:
        return list(map(itemgetter(positions[name]), rows)) if name in positions else [""] * len(rows)

    values, value_errors = values_parse(column("value"))
    timestamps, timestamp_errors = timestamps_parse(column("timestamp"))
    types = [event_type] * len(rows) if event_type else column("type")
    errors = {**timestamp_errors, **value_errors, **errors}
    return RawEvents(lines, column("user"), column("item"), types, values, timestamps, errors)


def values_parse(texts: list[str]) -> tuple[Floats, Rejections]:
    """Text → float64; '' means no value (NaN); anything else must be a finite number."""
    try:
        values = np.array(texts, dtype=np.float64)  # all rows have a value: parsed in C
    except ValueError:
        values = np.array([_float_or_nan(text) for text in texts], dtype=np.float64)
    errors = {
        int(k): RowError("value must be a finite number", texts[k])
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
        return np.clip(seconds, -(10**12), 10**12) * _US, {}  # clipped: out of range stays out of range
    except (ValueError, OverflowError):
        pass
    try:
        return _iso_column_micros(texts), {}
    except ValueError:
        return _timestamps_parse_each(texts)


def _iso_column_micros(texts: list[str]) -> Ints:
    """All ISO 8601 with a zone (raises ValueError otherwise): 3x faster than row by row with fallbacks."""
    moments = list(map(datetime.fromisoformat, texts))
    if any(moment.tzinfo is None for moment in moments):
        raise ValueError("a timestamp without a zone")
    seconds = np.fromiter(map(datetime.timestamp, moments), dtype=np.float64, count=len(moments))
    return np.round(seconds * _US).astype(np.int64)  # exact: the float's error is far below 0.5 µs


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
        return _iso_micros(text)
    if not math.isfinite(seconds) or abs(seconds) > 1e12:
        raise RowError("timestamp out of range", text)
    return round(seconds * _US)


def _iso_micros(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RowError("invalid timestamp", text) from None
    if moment.tzinfo is None:
        raise RowError("timestamp needs a time zone", text)
    return round(moment.timestamp() * _US)


def jsonl_events_read(path: Path, *, limit: int | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[RawEvents]:
    """Chunks of a JSON Lines file of interaction objects shaped as in the API (blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        numbered = ((line, text) for line, text in enumerate(handle, 1) if text.strip())
        for batch in _batches(islice(numbered, limit), chunk_rows):
            yield _json_events(batch)


def _json_events(batch: list[tuple[int, str]]) -> RawEvents:
    rows: list[tuple[str | None, str | None, str | None, float, int]] = []
    errors: Rejections = {}
    for k, (_, text) in enumerate(batch):
        try:
            rows.append(_json_event(text))
        except RowError as error:
            errors[k] = error
            rows.append((None, None, None, math.nan, NO_TIMESTAMP))
    users, items, types, values, stamps = zip(*rows, strict=True)
    return RawEvents(
        [line for line, _ in batch],
        list(users),
        list(items),
        list(types),
        np.array(values, dtype=np.float64),
        np.array(stamps, dtype=np.int64),
        errors,
    )


def _json_event(text: str) -> tuple[str | None, str | None, str | None, float, int]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        raise RowError("invalid JSON", text) from None
    if not isinstance(row, dict):
        raise RowError("not a JSON object", text)
    if not INTERACTION_FIELDS.issuperset(row):
        raise RowError("unknown field(s)", ", ".join(sorted(set(row) - INTERACTION_FIELDS)))
    missing = [name for name in ("user", "item", "type") if name not in row]
    if missing:
        raise RowError("missing field(s)", ", ".join(missing))
    stamp = row.get("timestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise RowError("timestamp must be an ISO 8601 string", stamp)
    return (
        _string_or_none(row["user"]),
        _string_or_none(row["item"]),
        _string_or_none(row["type"]),
        _json_value(row.get("value")),
        NO_TIMESTAMP if stamp is None else _iso_micros(stamp),
    )


def _string_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _json_value(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError("value must be a finite number", value)
    return float(value)


def _batches(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def _read_ahead(chunks: Iterable[T]) -> Iterator[T]:
    """Read and check the next chunk on a thread while the database stores this one: two cores, two jobs."""
    iterator = iter(chunks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-read") as pool:
        pending = pool.submit(next, iterator, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, iterator, None)
            yield chunk


# ---- checking events -------------------------------------------------------------------------


@dataclass
class _CheckedEvents:
    raw: RawEvents
    codes: npt.NDArray[np.int16]
    rejected: Rejections


def _events_check(raw: RawEvents, rules: EventRules, now_us: int) -> _CheckedEvents:
    """The API's rules for an event, applied to whole columns; pure, so it runs on the read-ahead thread."""
    codes = rules.codes(raw.types)
    stamps = raw.timestamps
    stamps[stamps == NO_TIMESTAMP] = now_us
    given = ~np.isnan(raw.values)
    checks: list[tuple[str, npt.NDArray[np.bool_], Any]] = [  # (reason, rows, what to show)
        ("invalid user id", _invalid_ids(raw.users), raw.users),
        ("invalid item id", _invalid_ids(raw.items), raw.items),
        ("unknown event type", codes < 0, raw.types),
        (f"value must lie within ±{MAX_VALUE:g}", given & (np.abs(raw.values) > MAX_VALUE), raw.values),
        ("this event type needs a value", rules.needs_value(codes) & ~given, raw.types),
        (
            "timestamp must lie between 1970 and one day from now",
            (stamps < 0) | (stamps > now_us + _MAX_SKEW_US),
            _MicrosAsText(stamps),
        ),
    ]
    rejected = dict(raw.errors)
    for reason, mask, column in checks:
        for k in np.flatnonzero(mask):
            rejected.setdefault(int(k), RowError(reason, column[int(k)]))
    return _CheckedEvents(raw, codes, rejected)


@dataclass(frozen=True)
class _MicrosAsText:
    micros: Ints

    def __getitem__(self, k: int) -> str:
        try:
            return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(self.micros[k]))).isoformat()
        except OverflowError:
            return f"{self.micros[k] / _US:.0f} s since 1970"


def _invalid_ids(column: Sequence[str | None]) -> npt.NDArray[np.bool_]:
    invalid = {value for value in set(column) if not is_external_id(value)}  # ids repeat: check each once
    if not invalid:
        return np.zeros(len(column), dtype=bool)
    return np.fromiter((value in invalid for value in column), dtype=bool, count=len(column))


# ---- loading events --------------------------------------------------------------------------


@dataclass
class EventArrays:
    """Events of existing users and items by database id; ``codes`` index ``EventRules.names``."""

    user_ids: Ints
    item_ids: Ints
    codes: npt.NDArray[np.int16]
    values: Floats  # NaN: no value
    timestamps: Ints  # microseconds since the epoch


def interactions_load(
    *, chunks: Iterable[RawEvents], create_items: bool = True, progress: Progress | None = None
) -> ImportReport:
    """Store events chunk by chunk, creating unknown users (and items unless told not to) as the API does.

    Bad rows are rejected and reported, never fatal; re-loading the same rows changes nothing.
    """
    rules, report, started = EventRules.load(), ImportReport(), time.perf_counter()
    now_us = round(datetime.now(UTC).timestamp() * _US)
    for checked in _read_ahead(_events_check(raw, rules, now_us) for raw in chunks):
        _events_store(checked, rules, create_items, report)
        if progress:
            progress(len(checked.raw.lines))
    report.seconds = time.perf_counter() - started
    return report


def interaction_arrays_load(
    *, batches: Iterable[EventArrays], rules: EventRules, progress: Progress | None = None
) -> ImportReport:
    """Store events that need no checking (generated ones) chunk by chunk."""
    report, started = ImportReport(), time.perf_counter()
    for events in _read_ahead(batches):
        created, updated = atomic_with_retry(partial(_arrays_write, events, rules))
        report.rows += len(events.user_ids)
        report.count(len(events.user_ids), created, updated)
        if progress:
            progress(len(events.user_ids))
    report.seconds = time.perf_counter() - started
    return report


def _events_store(checked: _CheckedEvents, rules: EventRules, create_items: bool, report: ImportReport) -> None:
    raw = checked.raw

    def work() -> tuple[int, int, int, int, Rejections]:
        rejected = dict(checked.rejected)
        known_items = None if create_items else _reject_unknown_items(raw, rejected)
        keep = np.ones(len(raw.lines), dtype=bool)
        keep[list(rejected)] = False
        user_column, item_column = _kept(raw.users, keep), _kept(raw.items, keep)
        users, users_created = ids_resolve(model=User, external_ids=set(user_column), create=True)
        items, items_created = (
            (known_items, 0)
            if known_items is not None
            else ids_resolve(model=Item, external_ids=set(item_column), create=True)
        )
        events = EventArrays(
            _ids_map(users, user_column),
            _ids_map(items, item_column),
            checked.codes[keep],
            raw.values[keep],
            raw.timestamps[keep],
        )
        return (*_arrays_write(events, rules), users_created, items_created, rejected)

    created, updated, users_created, items_created, rejected = atomic_with_retry(work)
    report.rows += len(raw.lines)
    report.users_created += users_created
    report.items_created += items_created
    report.count(len(raw.lines) - len(rejected), created, updated)
    for k in sorted(rejected):
        report.reject(raw.lines[k], rejected[k])


def _reject_unknown_items(raw: RawEvents, rejected: Rejections) -> dict[str, int]:
    """Reject rows whose item does not exist; returns the ids of those that do."""
    wanted = {item for k, item in enumerate(raw.items) if k not in rejected and item is not None}
    known, _ = ids_resolve(model=Item, external_ids=wanted, create=False)
    for k, item in enumerate(raw.items):
        if item not in known:
            rejected.setdefault(k, RowError("unknown item", item))
    return known


def _kept(column: Sequence[str | None], keep: npt.NDArray[np.bool_]) -> list[str]:
    """A column's values on the kept rows: never None, rows without a valid id are rejected."""
    return cast(list[str], list(compress(column, keep)))


def _ids_map(ids: dict[str, int], external_ids: list[str]) -> Ints:
    return np.fromiter(map(ids.__getitem__, external_ids), dtype=np.int64, count=len(external_ids))


# ---- SQL -------------------------------------------------------------------------------------


def _stage(cursor: Any, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
    """Empty the session's temporary ``table`` (creating it) and COPY ``rows`` into it."""
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} {columns}")
    cursor.execute(f"TRUNCATE {table}")
    with cursor.cursor.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


_STUBS_INSERT = {
    User: """
        INSERT INTO recsys_user (external_id, attributes, created_at, updated_at)
        SELECT external_id, '{}', now(), now() FROM recsys_import_ids ORDER BY external_id
        ON CONFLICT (external_id) DO NOTHING
    """,
    Item: """
        INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,
                                 created_at, updated_at)
        SELECT external_id, '', '', '{}', '{}', false, true, now(), now()
        FROM recsys_import_ids ORDER BY external_id
        ON CONFLICT (external_id) DO NOTHING
    """,
}


def ids_resolve(
    *, model: type[User] | type[Item], external_ids: Iterable[str], create: bool
) -> tuple[dict[str, int], int]:
    """The database ids of ``external_ids`` (those that exist, or all after creating stubs); and how many were new."""
    table = model._meta.db_table
    with connection.cursor() as cursor:
        _stage(cursor, "recsys_import_ids", "(external_id text)", ((i,) for i in external_ids))
        created = 0
        if create:
            cursor.execute(_STUBS_INSERT[model])
            created = cursor.rowcount
        # A statement of its own: it sees rows a concurrent writer committed while the insert waited.
        cursor.execute(f"SELECT s.external_id, t.id FROM recsys_import_ids s JOIN {table} t USING (external_id)")
        return dict(cursor.fetchall()), created


# Fixed-width rows of PostgreSQL's binary COPY format, built by numpy without a Python loop.
# A NaN value stands for NULL (values are checked finite), so every row has the same width.
_EVENT_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("user_len", ">i4"),
        ("user", ">i8"),
        ("item_len", ">i4"),
        ("item", ">i8"),
        ("code_len", ">i4"),
        ("code", ">i2"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("weight_len", ">i4"),
        ("weight", ">f8"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_EVENTS_STAGE = """
    CREATE TEMP TABLE IF NOT EXISTS recsys_import_events
        (user_id bigint, item_id bigint, code smallint, value float8, weight float8, ts timestamptz)
"""
# Re-sending an event is a no-op; re-sending it with another value updates it (as in the API).
# A NOT EXISTS pre-filter against stored rows made re-runs 2x faster but fresh imports slower, and
# the planner answered it with a hash join over the whole table once that grew past the chunk.
_EVENTS_UPSERT = """
    WITH written AS (
        INSERT INTO recsys_interaction AS old (user_id, item_id, event_type, value, weight, timestamp, created_at)
        SELECT s.user_id, s.item_id, (%(names)s::text[])[s.code + 1], nullif(s.value, 'NaN'), s.weight, s.ts, now()
        FROM recsys_import_events s
        ON CONFLICT (user_id, item_id, event_type, timestamp) DO UPDATE
            SET value = EXCLUDED.value, weight = EXCLUDED.weight
            WHERE (old.value, old.weight) IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.weight)
        RETURNING (old.xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""


def _arrays_write(events: EventArrays, rules: EventRules) -> tuple[int, int]:
    """COPY the events into staging and upsert them; returns (created, updated)."""
    rows = _binary_rows(_deduplicated(events), rules)
    with connection.cursor() as cursor:
        cursor.execute(_EVENTS_STAGE)
        cursor.execute("TRUNCATE recsys_import_events")
        with cursor.cursor.copy("COPY recsys_import_events FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_COPY_HEADER)
            copy.write(rows.tobytes())
            copy.write(_COPY_TRAILER)
        cursor.execute(_EVENTS_UPSERT, {"names": list(rules.names)})
        created, updated = cursor.fetchone()
    return created, updated


def _deduplicated(events: EventArrays) -> EventArrays:
    """Sorted by the unique key (index-friendly inserts); of repeated events the last one wins, as in the API."""
    order = np.lexsort((events.timestamps, events.codes, events.item_ids, events.user_ids))  # stable
    columns = [column[order] for column in (events.user_ids, events.item_ids, events.codes, events.timestamps)]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = np.logical_or.reduce([column[1:] != column[:-1] for column in columns])
    order = order[last]
    return EventArrays(
        events.user_ids[order],
        events.item_ids[order],
        events.codes[order],
        events.values[order],
        events.timestamps[order],
    )


def _binary_rows(events: EventArrays, rules: EventRules) -> npt.NDArray[np.void]:
    rows = np.empty(len(events.user_ids), dtype=_EVENT_ROW)
    rows["fields"] = 6
    for name, width in (("user", 8), ("item", 8), ("code", 2), ("value", 8), ("weight", 8), ("ts", 8)):
        rows[f"{name}_len"] = width
    rows["user"], rows["item"], rows["code"] = events.user_ids, events.item_ids, events.codes
    rows["value"] = events.values
    rows["weight"] = rules.weights_of(events.codes, events.values)
    rows["ts"] = events.timestamps - _PG_EPOCH_US
    return rows


# ---- items and users ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRow:
    external_id: str
    title: str = ""
    text: str = ""
    categories: Sequence[str] = ()
    line: int = 0


@dataclass(frozen=True)
class UserRow:
    external_id: str
    attributes: dict[str, Any]
    line: int = 0


# Only title, text and categories come from an import; other fields keep what the API set.
_ITEMS_UPSERT = """
    WITH written AS (
        INSERT INTO recsys_item AS old (external_id, title, text, categories, attributes, is_hidden, is_stub,
                                        content_changed_at, created_at, updated_at)
        SELECT external_id, title, text, categories, '{}', false, false, now(), now(), now()
        FROM recsys_import_items ORDER BY external_id
        ON CONFLICT (external_id) DO UPDATE
            SET title = EXCLUDED.title, text = EXCLUDED.text, categories = EXCLUDED.categories,
                is_stub = false, updated_at = now(),
                content_changed_at = CASE
                    WHEN (old.title, old.text, old.categories) IS DISTINCT FROM
                         (EXCLUDED.title, EXCLUDED.text, EXCLUDED.categories)
                    THEN now() ELSE old.content_changed_at END
            WHERE old.is_stub OR (old.title, old.text, old.categories)
                  IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.text, EXCLUDED.categories)
        RETURNING (old.xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""
_USERS_UPSERT = """
    WITH written AS (
        INSERT INTO recsys_user AS old (external_id, attributes, created_at, updated_at)
        SELECT external_id, attributes, now(), now() FROM recsys_import_users ORDER BY external_id
        ON CONFLICT (external_id) DO UPDATE SET attributes = EXCLUDED.attributes, updated_at = now()
            WHERE old.attributes IS DISTINCT FROM EXCLUDED.attributes
        RETURNING (old.xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""


def items_load(*, rows: Iterable[ItemRow]) -> ImportReport:
    """Upsert items' title, text and categories by id; invalid rows are rejected and reported."""
    return _documents_load(
        rows,
        _item_document,
        "recsys_import_items",
        "(external_id text, title text, text text, categories text[])",
        _ITEMS_UPSERT,
    )


def users_load(*, rows: Iterable[UserRow]) -> ImportReport:
    """Upsert users' attributes by id; invalid rows are rejected and reported."""
    return _documents_load(
        rows, _user_document, "recsys_import_users", "(external_id text, attributes jsonb)", _USERS_UPSERT
    )


def _item_document(row: ItemRow) -> tuple[Any, ...]:
    fields = clean_item_fields({"title": row.title, "text": row.text, "categories": list(row.categories)})
    return clean_external_id(row.external_id), fields["title"], fields["text"], fields["categories"]


def _user_document(row: UserRow) -> tuple[Any, ...]:
    return clean_external_id(row.external_id), Jsonb(clean_attributes(row.attributes))


def _documents_load(
    rows: Iterable[ItemRow | UserRow],
    clean: Callable[[Any], tuple[Any, ...]],
    table: str,
    columns: str,
    upsert: str,
) -> ImportReport:
    report, started = ImportReport(), time.perf_counter()
    for batch in _batches(rows, ITEM_CHUNK_ROWS):
        documents: dict[str, tuple[Any, ...]] = {}
        rejected_before = report.rejected
        for row in batch:
            try:
                document = clean(row)
            except ValidationFailed as error:
                report.reject(row.line, RowError(error.message, row.external_id))
                continue
            documents[document[0]] = document  # a repeated id: the last row wins
        created, updated = atomic_with_retry(partial(_documents_write, documents, table, columns, upsert))
        report.rows += len(batch)
        report.count(len(batch) - (report.rejected - rejected_before), created, updated)
    report.seconds = time.perf_counter() - started
    return report


def _documents_write(documents: dict[str, tuple[Any, ...]], table: str, columns: str, upsert: str) -> tuple[int, int]:
    with connection.cursor() as cursor:
        _stage(cursor, table, columns, documents.values())
        cursor.execute(upsert)
        created, updated = cursor.fetchone()
    return created, updated


# ---- for the commands ------------------------------------------------------------------------


def data_lines(path: Path) -> int:
    """Lines in a file, counted in 1 MiB blocks (a progress bar's total)."""
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def progress_bar(total: int | None, *, disabled: bool) -> tqdm[Any]:
    """A bar on stderr, shown only when stderr is a terminal."""
    return tqdm(total=total, unit="rows", unit_scale=True, file=sys.stderr, disable=disabled or not sys.stderr.isatty())
