"""The file readers' fast paths (Arrow's CSV reader, vectorised parsing of values and timestamps) read
what the row-by-row rules read: the same fields, the same numbers, the same rejections."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.ingestion.delimited import delimited_rows_read, timestamp_micros, timestamps_parse, values_parse
from recsys.ingestion.readers import csv_events_read, delimited_events_read
from recsys.ingestion.rules import NO_TIMESTAMP, RawEvents, RowError

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)

zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=23))]
)
iso_texts = st.builds(
    lambda moment, zone, spec: moment.replace(tzinfo=zone).isoformat(timespec=spec).replace("+00:00", "Z"),
    st.datetimes(min_value=datetime(1890, 1, 1), max_value=datetime(2110, 1, 1)),
    zones,
    st.sampled_from(["seconds", "milliseconds", "microseconds", "auto"]),
)
# Text near the shapes the fast paths take: a character changed, dropped or added shows where they part.
near = st.text(st.sampled_from("0123456789-+:.TZtz eE_/ "), max_size=32)
timestamp_texts = (
    iso_texts
    | st.integers(-(10**13), 10**13).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["", "2024-02-30T10:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T10:00:00", "yesterday"])
    | near
)
value_texts = (
    st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.integers(-(10**30), 10**30).map(str)
    | st.sampled_from(["", "1e400", "-0", "+.5", "5.", "1_000", " 4 ", "nan", "Infinity", "0x10"])
    | st.text(st.sampled_from("0123456789+-.eE_ ni"), max_size=12)
)


def rule_timestamps(texts: list[str]) -> list[int | str]:
    """Each text through the row's own rule: its microseconds, or the reason it is refused."""
    out: list[int | str] = []
    for text in texts:
        try:
            out.append(timestamp_micros(text))
        except RowError as error:
            out.append(error.reason)
    return out


@given(st.lists(timestamp_texts, max_size=20))
@settings(max_examples=400, deadline=None)
def test_timestamps_parsed_as_a_column_equal_each_parsed_by_the_rule(texts):
    micros, errors = timestamps_parse(pa.array(texts, pa.string()))

    got = [errors[k].reason if k in errors else int(micros[k]) for k in range(len(texts))]
    assert got == rule_timestamps(texts)


def test_a_day_its_month_does_not_have_is_refused_by_the_rule_beside_good_rows():
    micros, errors = timestamps_parse(pa.array(["2024-01-01T10:00:00Z", "2024-02-30T10:00:00Z", ""], pa.string()))

    assert micros[0] == timestamp_micros("2024-01-01T10:00:00Z") and micros[2] == NO_TIMESTAMP
    assert list(errors) == [1] and errors[1].reason == "invalid timestamp"


@given(st.lists(value_texts, max_size=20))
@settings(max_examples=400, deadline=None)
def test_values_parsed_as_a_column_equal_pythons_float(texts):
    values, errors = values_parse(pa.array(texts, pa.string()))

    for k, text in enumerate(texts):
        try:
            expected = float(text) if text else math.nan
        except ValueError:
            expected = math.inf
        if not text:
            assert math.isnan(values[k]) and k not in errors
        elif math.isfinite(expected):
            assert values[k] == expected and k not in errors
        else:
            assert errors[k].reason == "value must be a finite number" and errors[k].detail == text[:60]


# ---- Arrow's CSV reader against the csv module -----------------------------------------------------

FIELDS = ["user", "item", "type", "value", "timestamp"]
cells = st.text(st.sampled_from('ab1,"\n\r :-'), max_size=6) | st.sampled_from(["u1", "view", "4.5", "1704103200"])
lines = st.lists(cells, min_size=0, max_size=6).map(lambda fields: ",".join(fields))
line_ends = st.sampled_from(["\n", "\r\n"])


def as_rows(raw: RawEvents) -> list[tuple[object, ...]]:
    return [
        (
            raw.lines[k],
            raw.users[k],
            raw.items[k],
            raw.types[k],
            None if math.isnan(raw.values[k]) else float(raw.values[k]),
            int(raw.timestamps[k]),
            (raw.errors[k].reason, raw.errors[k].detail) if k in raw.errors else None,
        )
        for k in range(len(raw.lines))
    ]


def by_the_csv_module(path: Path, chunk_rows: int) -> list[tuple[object, ...]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))[1:]
    out: list[tuple[object, ...]] = []
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start : start + chunk_rows]
        lines = range(2 + start, 2 + start + len(chunk))
        out += as_rows(delimited_rows_read(chunk, positions={n: k for k, n in enumerate(FIELDS)}, width=5, lines=lines))
    return out


@given(body=st.lists(lines, max_size=12), end=line_ends, chunk_rows=st.sampled_from([1, 3, 200_000]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_csv_file_is_read_as_the_csv_module_reads_it(tmp_path, body, end, chunk_rows):
    path = tmp_path / "events.csv"
    path.write_bytes((end.join([",".join(FIELDS), *body]) + end).encode())

    got = [row for raw in csv_events_read(path, chunk_rows=chunk_rows) for row in as_rows(raw)]

    assert got == by_the_csv_module(path, chunk_rows)


def regular_csv(path: Path, rows: int) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    body = [f"u{n % 7},i{n % 5},view,,{(start + timedelta(seconds=n)).isoformat()}" for n in range(rows)]
    path.write_text("\ufeff" + "\n".join(["User,Item,Type,Value,Timestamp", *body]) + "\n")


def test_a_row_arrow_refuses_far_into_the_file_is_read_from_there_by_the_csv_module(tmp_path):
    path = tmp_path / "events.csv"
    regular_csv(path, 50_000)
    with path.open("a") as handle:
        handle.write("short,row\n\nu1,i1,view,,1704103200\n")

    chunks = list(csv_events_read(path, chunk_rows=20_000))

    assert [len(raw.lines) for raw in chunks] == [20_000, 20_000, 10_003]
    assert by_the_csv_module(path, 20_000) == [row for raw in chunks for row in as_rows(raw)]
    tail = chunks[-1]
    assert {k: error.reason for k, error in tail.errors.items()} == {
        10_000: "expected 5 fields",
        10_001: "expected 5 fields",
    }
    assert (tail.lines[10_002], tail.users[10_002]) == (50_004, "u1")


def test_limit_stops_after_that_many_rows(tmp_path):
    path = tmp_path / "events.csv"
    regular_csv(path, 1_000)

    chunks = list(csv_events_read(path, limit=250, chunk_rows=100))

    assert [len(raw.lines) for raw in chunks] == [100, 100, 50]
    assert chunks[-1].lines[-1] == 251


def test_the_first_chunk_is_smaller_and_every_line_keeps_its_number(tmp_path):
    path = tmp_path / "events.csv"
    regular_csv(path, 1_000)

    chunks = list(csv_events_read(path, chunk_rows=300, first_chunk_rows=100))

    assert [len(raw.lines) for raw in chunks] == [100, 300, 300, 300]
    assert [row for raw in chunks for row in as_rows(raw)] == by_the_csv_module(path, 1_000)


def test_a_tab_separated_file_without_header_is_read_by_position(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3.5\t891717742\textra\n")

    (raw,) = delimited_events_read(
        path, positions={"user": 0, "item": 1, "value": 2, "timestamp": 3}, event_type="rating", delimiter="\t"
    )

    assert [raw.users[k] for k in range(2)] == ["196", "186"] and raw.types.names == ["rating"]
    assert raw.values.tolist() == [3.0, 3.5]
    assert raw.timestamps.tolist() == [881250949 * 10**6, 891717742 * 10**6]
    assert not raw.errors
