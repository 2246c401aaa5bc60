"""Delimited files (CSV, TSV) read by Arrow's C++ reader, their text columns parsed as whole arrays; the
csv module reads from the first row Arrow refuses. The rules stay those of ``rules`` (ids, types, ranges)
and of the row-by-row parses here, which the vectorised ones are tested equal to."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce
from itertools import islice
from operator import itemgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsys.ingestion.readers import batches, utf8
from recsys.ingestion.rules import (
    NO_TIMESTAMP,
    TIMESTAMP_RANGE,
    US,
    Floats,
    Ints,
    Labels,
    RawEvents,
    Rejections,
    RowError,
    iso_micros,
    recommendation_id_field,
)

_ARROW_BLOCK = 1 << 20  # bytes Arrow parses at a time (its default)


@dataclass(frozen=True)
class Layout:
    """Where a delimited file's events are: its columns by name, how many fields a row needs, the dialect."""

    path: Path
    positions: dict[str, int]
    width: int  # a row with fewer fields is rejected
    delimiter: str
    encoding: str
    header_rows: int
    fields: int = 0  # the fields of a row, for Arrow (0: ``width``)


def delimited_read(
    layout: Layout, *, event_type: str | None, limit: int | None, chunk_rows: int, first_rows: int | None = None
) -> Iterator[RawEvents]:
    """Arrow's C++ reader while the file is regular (every row ``fields`` wide, no blank line); from the first
    row it refuses on, the csv module, which reads the rest as it always did (short rows are rejected).
    Chunks of ``chunk_rows`` rows, the first of ``first_rows`` (default: the same)."""
    done = 0
    try:
        for table in _arrow_tables(layout, limit, chunk_rows, first_rows or chunk_rows):
            first_line = layout.header_rows + 1 + done
            yield _columns_events(table, layout.positions, range(first_line, first_line + table.num_rows), event_type)
            done += table.num_rows
    except pa.ArrowInvalid:
        # (a byte that is not UTF-8 becomes a lone surrogate: its row is refused, not the file)
        with layout.path.open(newline="", encoding=layout.encoding, errors="surrogateescape") as handle:
            reader = csv.reader(handle, delimiter=layout.delimiter)
            rest = islice(reader, layout.header_rows + done, None if limit is None else layout.header_rows + limit)
            first_line = layout.header_rows + 1 + done
            for rows in batches(rest, chunk_rows):
                lines = range(first_line, first_line + len(rows))
                yield delimited_rows_read(
                    rows, positions=layout.positions, width=layout.width, lines=lines, event_type=event_type
                )
                first_line += len(rows)


def _arrow_tables(layout: Layout, limit: int | None, chunk_rows: int, first_rows: int) -> Iterator[pa.Table]:
    """Tables of ``chunk_rows`` rows (the first of ``first_rows``, the last one shorter) of the file's needed
    columns, as text."""
    fields = layout.fields or layout.width
    names = [f"f{k}" for k in range(fields)]
    wanted = [f"f{k}" for k in sorted(set(layout.positions.values()))]
    reader = pa_csv.open_csv(
        layout.path,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=layout.header_rows, block_size=_ARROW_BLOCK),
        parse_options=pa_csv.ParseOptions(
            delimiter=layout.delimiter, newlines_in_values=True, ignore_empty_lines=False
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(wanted, pa.string()),
            include_columns=wanted,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    pending: list[pa.RecordBatch] = []
    held, size = 0, first_rows
    remaining = limit
    for batch in reader:
        if _blank_rows(batch):
            raise pa.ArrowInvalid("a blank row")  # an empty line reads as empty fields: the csv module says none
        if remaining is not None:
            batch = batch.slice(0, remaining)
            remaining -= batch.num_rows
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            pending = table.slice(size).to_batches()
            held -= size
            size = chunk_rows
        if remaining == 0:
            break
    if held:
        yield pa.Table.from_batches(pending)


def _blank_rows(batch: pa.RecordBatch) -> bool:
    """Whether a row has only empty fields, as Arrow reads an empty line (the csv module reads no field)."""
    empty = reduce(pc.and_, [pc.equal(pc.binary_length(column), 0) for column in batch.columns])
    return bool(pc.any(empty).as_py())


def _columns_events(table: pa.Table, positions: dict[str, int], lines: range, event_type: str | None) -> RawEvents:
    def column(name: str) -> pa.Array:
        if name not in positions:
            return pa.array([""] * table.num_rows, pa.string())
        return table.column(f"f{positions[name]}").combine_chunks()

    return _text_events(column, table.num_rows, lines, event_type, {}, "recommendation_id" in positions)


def delimited_rows_read(
    rows: list[list[str]], *, positions: dict[str, int], width: int, lines: range, event_type: str | None = None
) -> RawEvents:
    """The events of rows the csv module read (the rows Arrow refuses, and the reference its reading is tested
    against); a row with fewer than ``width`` fields is rejected."""
    errors: Rejections = {}
    for position in [k for k, row in enumerate(rows) if len(row) < width]:
        errors[position] = RowError(f"expected {width} fields", f"got {len(rows[position])}", problem="too few fields")
        rows[position] = [""] * width
    for position in [k for k, row in enumerate(rows) if not all(map(utf8, row))]:
        raw = rows[position]
        errors[position] = RowError("not UTF-8", _file_bytes(raw), problem="not UTF-8")
        rows[position] = [""] * len(raw)

    def column(name: str) -> pa.Array:
        texts = list(map(itemgetter(positions[name]), rows)) if name in positions else [""] * len(rows)
        return pa.array(texts, pa.string())

    return _text_events(column, len(rows), lines, event_type, errors, "recommendation_id" in positions)


def _file_bytes(row: list[str]) -> bytes:
    """A row's fields as the bytes the file held (for the report)."""
    return ",".join(row).encode("utf-8", "surrogateescape")


def _text_events(
    column: Callable[[str], pa.Array],
    size: int,
    lines: range,
    event_type: str | None,
    errors: Rejections,
    has_recommendation_ids: bool,
) -> RawEvents:
    """The events of a file's text columns (each row's fields as read, '' where absent)."""
    values, value_errors = values_parse(column("value"))
    timestamps, timestamp_errors = timestamps_parse(column("timestamp"))
    types = Labels([event_type], np.zeros(size, dtype=np.int32)) if event_type else labels_read(column("type"))
    recommendation_ids = None
    if has_recommendation_ids:
        recommendation_ids, id_errors = recommendation_ids_parse(column("recommendation_id").to_pylist())
        errors = {**id_errors, **errors}
    errors = {**timestamp_errors, **value_errors, **errors}
    users, items = labels_read(column("user")), labels_read(column("item"))
    return RawEvents(lines, users, items, types, values, timestamps, errors, recommendation_ids)


def labels_read(texts: pa.Array) -> Labels:
    """A text column as its distinct values and each row's position among them (hashed in C++)."""
    encoded = texts.dictionary_encode()
    return Labels(encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32))


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


# Text the vectorised parsers take; any other text goes through the row's own rule (``_float_or_nan``,
# ``timestamp_micros``), which defines the result: these shapes are ones where Arrow's parse and
# Python's agree exactly (tests/recsys/ingestion/test_readers.py holds them equal on generated text).
_DECIMAL = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$"
# Whole unix seconds within ±1e12 (exact as integers; larger ones are out of range either way).
_WHOLE_SECONDS = "-?[0-9]{1,12}"
_WHOLE_SECONDS_RE = re.compile(_WHOLE_SECONDS)
_ISO_ZONED = (  # 1900-2099, fields in their ranges (a day past its month's end makes Arrow refuse the column)
    r"^(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
_MICROS_UTC = pa.timestamp("us", tz="UTC")


def values_parse(texts: pa.Array) -> tuple[Floats, Rejections]:
    """Text → float64; '' means no value (NaN); anything else must be a finite number."""
    values = np.full(len(texts), np.nan)
    given = pc.binary_length(texts).to_numpy(zero_copy_only=False) > 0
    slow = given.copy()
    fast = pc.match_substring_regex(texts, _DECIMAL).to_numpy(zero_copy_only=False)
    if fast.any():
        try:
            values[fast] = pc.cast(texts.filter(fast), pa.float64()).to_numpy()
            slow &= ~fast
        except pa.ArrowInvalid:  # a number Arrow will not parse: each row by the rule
            pass
    others = np.flatnonzero(slow)
    if len(others):
        values[others] = [_float_or_nan(text) for text in texts.take(others).to_pylist()]
    bad = np.flatnonzero(given & ~np.isfinite(values))
    errors = {
        k: RowError("value must be a finite number", text, fields=("value",), problem="not a finite number")
        for k, text in zip(bad.tolist(), texts.take(bad).to_pylist(), strict=True)
    }
    return values, errors


def _float_or_nan(text: str) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.inf  # reported as not a finite number


def timestamps_parse(texts: pa.Array) -> tuple[Ints, Rejections]:
    """Unix seconds or ISO 8601 with a zone → microseconds since the epoch; '' → NO_TIMESTAMP."""
    micros = np.full(len(texts), NO_TIMESTAMP, dtype=np.int64)
    slow = pc.binary_length(texts).to_numpy(zero_copy_only=False) > 0
    seconds = pc.match_substring_regex(texts, f"^{_WHOLE_SECONDS}$").to_numpy(zero_copy_only=False)
    if seconds.any():
        micros[seconds] = pc.cast(texts.filter(seconds), pa.int64()).to_numpy() * US
        slow &= ~seconds
    iso = pc.match_substring_regex(texts, _ISO_ZONED).to_numpy(zero_copy_only=False)
    if iso.any():
        try:
            micros[iso] = pc.cast(texts.filter(iso), _MICROS_UTC).cast(pa.int64()).to_numpy()
            slow &= ~iso
        except pa.ArrowInvalid:  # a day its month does not have: each row by the rule, which names it
            pass
    errors: Rejections = {}
    for k, text in zip(np.flatnonzero(slow).tolist(), texts.filter(slow).to_pylist(), strict=True):
        try:
            micros[k] = timestamp_micros(text)
        except RowError as error:
            errors[k] = error
    return micros, errors


def timestamp_micros(text: str) -> int:
    """One timestamp as unix seconds or ISO 8601 with a zone → microseconds since the epoch."""
    if not text:
        return NO_TIMESTAMP
    if _WHOLE_SECONDS_RE.fullmatch(text):
        return int(text) * US
    try:
        seconds = float(text)
    except ValueError:
        return iso_micros(text)
    if not math.isfinite(seconds) or abs(seconds) > 1e12:
        raise RowError(TIMESTAMP_RANGE, text, fields=("timestamp",), problem="out of range")
    return round(seconds * US)
