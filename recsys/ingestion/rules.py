"""The rules an event must pass, written once for API batches and file imports; pure (numpy, no database)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import repeat
from operator import attrgetter, floordiv, sub
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from recsys.errors import DomainError, ItemNotFound, UserNotFound, ValidationFailed
from recsys.numbers import finite_number
from recsys.validation import is_external_id, parse_timestamp

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Codes = npt.NDArray[np.int16]

EVENT_FIELDS = frozenset({"user", "item", "type", "value", "timestamp", "recommendation_id"})
REQUIRED_EVENT_FIELDS = ("user", "item", "type")
# Any value is at most this large; values of the types that weigh by it (ratings) have a tighter,
# configured range (RECSYS_RATING_MIN/MAX): one huge rating would outweigh every other event.
MAX_VALUE = 1e9
# ... and, for the types that weigh by their value, 0 or at least this large in magnitude: a rating
# of 1e-300 weighs nothing, and such a weight underflowed single precision wherever weights were
# summed (the vectors are float4; the sums are now double precision).
MIN_VALUE = 1e-6
# Events from the future would dominate every time decay; allow some client clock skew.
MAX_CLOCK_SKEW = timedelta(days=1)
US = 1_000_000  # microseconds per second: timestamps are integer microseconds since 1970
NO_TIMESTAMP = int(np.iinfo(np.int64).min)  # the row has none: the ingestion's start time stands in
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_SKEW_US = MAX_CLOCK_SKEW // _MICROSECOND
TIMESTAMP_RANGE = "timestamp must lie between 1970 and one day from now"
VALUE_RANGE = f"value must lie within ±{MAX_VALUE:g}"
VALUE_TINY = f"value must be 0 or at least {MIN_VALUE:g} in magnitude"


class RowError(ValueError):
    """Why one row is rejected: ``reason`` is counted in import reports, ``detail`` shows the offending
    text, ``fields`` and ``problem`` make the API's error details (``{field: [problem]}``)."""

    def __init__(
        self,
        reason: str,
        detail: object = "",
        *,
        fields: Sequence[str] = ("non_field_errors",),
        problem: str = "",
        not_found: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = str(detail)[:60]
        self.fields = tuple(fields)
        self.problem = problem or reason
        self.not_found = not_found

    def domain_error(self) -> DomainError:
        """The error body of a rejected API row."""
        message = f"{self.reason}: {self.detail}" if self.detail else self.reason
        details = {name: [self.problem] for name in self.fields}
        if self.not_found:
            kind = ItemNotFound if self.fields == ("item",) else UserNotFound
            return kind(message, details=details)
        return ValidationFailed(message, details=details)


def unknown_row_error(what: str, external_id: str) -> RowError:
    """A row naming a user or item that does not exist (and is not to be created)."""
    return RowError(f"unknown {what}", external_id, fields=(what,), problem=f"unknown {what}", not_found=True)


Rejections = dict[int, RowError]  # position in a batch or chunk → why the row is rejected


@dataclass(frozen=True)
class EventRules:
    """The event types as arrays (``codes`` index ``names``, sorted), and the range of a weighing value."""

    names: tuple[str, ...]
    weights: Floats
    uses_value: npt.NDArray[np.bool_]
    value_min: float
    value_max: float
    # Types whose events are attributed to recommendations (EventType.counts_as_click); None: none are.
    clicks: npt.NDArray[np.bool_] | None = None

    def codes(self, types: Labels | Sequence[str | None]) -> Codes:
        """Each row's type code, -1 for an unknown type."""
        labels = types if isinstance(types, Labels) else Labels.of(types)
        index = {name: code for code, name in enumerate(self.names)}
        per_name = np.array([index.get(name, -1) for name in labels.names], dtype=np.int16)  # type: ignore[arg-type]
        return labels.of_names(per_name)

    def needs_value(self, codes: Codes) -> npt.NDArray[np.bool_]:
        return np.append(self.uses_value, False)[codes]  # code -1 (unknown type) lands on the False

    def weights_of(self, codes: Codes, values: Floats) -> Floats:
        """The type's weight, times the value where the type uses it (a rating of 4 weighs 4 × weight)."""
        return self.weights[codes] * np.where(self.uses_value[codes], values, 1.0)


class Labels:
    """A column of strings as its distinct values and each row's position among them (a dictionary
    encoding): the rules check each distinct id once and ids resolve once per distinct value, never a
    Python step per row. Indexing a row gives its value, as a list would."""

    def __init__(self, names: Sequence[str | None], index: npt.NDArray[np.int32]) -> None:
        self.names = list(names)
        self.index = index

    @classmethod
    def of(cls, column: Iterable[str | None]) -> Labels:
        positions: dict[str | None, int] = {}
        index = np.fromiter((positions.setdefault(value, len(positions)) for value in column), dtype=np.int32)
        return cls(list(positions), index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> str | None:
        return self.names[self.index[k]]

    def __eq__(self, other: object) -> bool:
        """Equal when every row has the same value (however the distinct values are numbered)."""
        if not isinstance(other, Labels):
            return NotImplemented
        return len(self) == len(other) and all(self[k] == other[k] for k in range(len(self)))

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def of_names(self, per_name: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A value per distinct name → that value on every row."""
        return per_name[self.index]

    def present(self, rows: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Which distinct names occur on ``rows`` (a mask over the rows)."""
        return np.bincount(self.index[rows], minlength=len(self.names)) > 0


@dataclass
class RawEvents:
    """Events as read (from a file or an API batch), column by column, with the rows found unreadable."""

    lines: Sequence[int]  # where each row came from, for reports: a file line or a batch index
    users: Labels
    items: Labels
    types: Labels
    values: Floats  # NaN where the row has no value
    timestamps: Ints  # microseconds since the epoch; NO_TIMESTAMP where the row has none
    errors: Rejections = field(default_factory=dict)
    recommendation_ids: Sequence[str | None] | None = None  # None: the source has no such column


# ---- one event as JSON (an API batch row or a JSON Lines line) ------------------------------------

EventTuple = tuple[str | None, str | None, str | None, float, int]
EMPTY_EVENT: EventTuple = (None, None, None, math.nan, NO_TIMESTAMP)


def event_fields(row: object) -> EventTuple:
    """(user, item, type, value, timestamp) of one event object; raises RowError on its shape.

    Ids and types are checked on whole columns by ``events_check``; a non-string id reads as None.
    """
    if not isinstance(row, dict):
        raise RowError("not a JSON object", fields=("non_field_errors",), problem="not an object")
    if not EVENT_FIELDS.issuperset(row):
        unknown = sorted(set(row) - EVENT_FIELDS)
        raise RowError("unknown field(s)", ", ".join(unknown), fields=unknown, problem="unknown field")
    missing = [name for name in REQUIRED_EVENT_FIELDS if name not in row]
    if missing:
        raise RowError("missing field(s)", ", ".join(missing), fields=missing, problem="required")
    stamp = row.get("timestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise RowError("timestamp must be an ISO 8601 string", stamp, fields=("timestamp",), problem="not a string")
    return (
        _string_or_none(row["user"]),
        _string_or_none(row["item"]),
        _string_or_none(row["type"]),
        value_number(row.get("value")),
        NO_TIMESTAMP if stamp is None else iso_micros(stamp),
    )


# ---- a whole batch of well-formed event objects, column by column ---------------------------------

EventColumns = tuple[list[str], list[str], list[str], Floats, Ints, list[str | None] | None]
_NONE = type(None)
_VALUE_TYPES = frozenset({int, float, _NONE})  # bool is refused: type(True) is bool
_TEXT_OR_NONE = frozenset({str, _NONE})
# Conversions to UTC that may overflow (years 1 and 9999): left to ``iso_micros``, which words the error.
_SAFE_MICROS = (
    (datetime(2, 1, 1, tzinfo=UTC) - EPOCH) // _MICROSECOND,
    (datetime(9998, 12, 31, tzinfo=UTC) - EPOCH) // _MICROSECOND,
)


def plain_events_columns(rows: Sequence[object]) -> EventColumns | None:
    """(users, items, types, values, timestamps, recommendation ids or None) of a batch whose every row
    is a well-formed event object, read a column at a time (a batch of 1,000: ~3x cheaper than row by row);
    None when any row is not, and ``event_fields`` must read them one by one to say why. Where it answers,
    the columns are exactly those that ``event_fields`` and ``recommendation_id_field`` give.
    """
    if not rows or set(map(type, rows)) != {dict}:
        return None
    dicts = cast(Sequence[dict[str, Any]], rows)
    if not EVENT_FIELDS.issuperset(set().union(*dicts)):
        return None
    if not all(all(map(dict.__contains__, dicts, repeat(name))) for name in REQUIRED_EVENT_FIELDS):
        return None
    users, items, types = ([row[name] for row in dicts] for name in REQUIRED_EVENT_FIELDS)
    if any(set(map(type, column)) != {str} for column in (users, items, types)):
        return None  # a non-string id or type: read as None, rejected row by row
    values = _plain_values([row.get("value") for row in dicts])
    stamps = _plain_timestamps([row.get("timestamp") for row in dicts])
    ids = [row.get("recommendation_id") for row in dicts]
    if values is None or stamps is None or not set(map(type, ids)) <= _TEXT_OR_NONE:
        return None
    named = [value for value in ids if value is not None]
    if not all(map(_RECOMMENDATION_ID_RE.fullmatch, named)):
        return None
    return users, items, types, values, stamps, ids if named else None


def _plain_values(values: list[object]) -> Floats | None:
    if not set(map(type, values)) <= _VALUE_TYPES:
        return None
    try:
        numbers = np.array(values, dtype=np.float64)  # None -> NaN
    except OverflowError:
        return None
    finite = np.isfinite(numbers)
    return numbers if np.count_nonzero(~finite) == values.count(None) else None  # NaN only where no value


def _plain_timestamps(stamps: list[object]) -> Ints | None:
    kinds = set(map(type, stamps))
    if not kinds <= _TEXT_OR_NONE:
        return None
    given = stamps if _NONE not in kinds else [s for s in stamps if s is not None]
    try:
        moments = list(map(datetime.fromisoformat, cast(list[str], given)))
    except ValueError:
        return None
    if None in set(map(attrgetter("tzinfo"), moments)):
        return None
    micros = np.fromiter(
        map(floordiv, map(sub, moments, repeat(EPOCH)), repeat(_MICROSECOND)), dtype=np.int64, count=len(moments)
    )
    if len(micros) and (micros.min() < _SAFE_MICROS[0] or micros.max() > _SAFE_MICROS[1]):
        return None
    if len(given) == len(stamps):
        return micros
    out = np.full(len(stamps), NO_TIMESTAMP, dtype=np.int64)
    out[[k for k, s in enumerate(stamps) if s is not None]] = micros
    return out


def _string_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def value_number(value: object) -> float:
    """A JSON value: a finite number, or None (NaN: no value)."""
    if value is None:
        return math.nan
    if not finite_number(value):
        raise RowError("value must be a finite number", value, fields=("value",), problem="not a finite number")
    return float(value)


def iso_micros(text: str) -> int:
    """An ISO 8601 timestamp with a zone → microseconds since the epoch (exact)."""
    try:
        moment = parse_timestamp(text)
    except ValidationFailed as error:
        problem = error.details["timestamp"][0]
        reasons = {"missing time zone": "timestamp needs a time zone", "out of range": TIMESTAMP_RANGE}
        reason = reasons.get(problem, "invalid timestamp")
        raise RowError(reason, text, fields=("timestamp",), problem=problem) from None
    return (moment - EPOCH) // _MICROSECOND


def micros_now() -> int:
    return (datetime.now(UTC) - EPOCH) // _MICROSECOND


# ---- the rules on whole columns ------------------------------------------------------------------


def events_check(
    raw: RawEvents,
    rules: EventRules,
    now_us: int,
    *,
    valid_ids: set[str] | None = None,
    oldest_us: int | None = None,
) -> tuple[Codes, Rejections]:
    """Apply every event rule to whole columns: each row's type code, and the rows rejected (first reason wins).

    Rows without a timestamp get ``now_us`` (in place). ``valid_ids``: ids found valid by earlier chunks of the
    same file, not checked again (and added to, up to ``KNOWN_IDS_MAX``). ``oldest_us``: the retention
    horizon (RECSYS_INTERACTION_RETENTION_DAYS); an older event would be stored and then dropped, so
    it is refused.
    """
    codes = rules.codes(raw.types)
    stamps = raw.timestamps
    stamps[stamps == NO_TIMESTAMP] = now_us
    given = ~np.isnan(raw.values)
    weighing = rules.needs_value(codes)
    low, high = rules.value_min, rules.value_max
    stamps_outside = (stamps < 0) | (stamps > now_us + _MAX_SKEW_US)
    checks: list[tuple[npt.NDArray[np.bool_], Any, str, str, str]] = [  # (rows, what to show, reason, field, problem)
        (_invalid_ids(raw.users, valid_ids), raw.users, "invalid user id", "user", "invalid id"),
        (_invalid_ids(raw.items, valid_ids), raw.items, "invalid item id", "item", "invalid id"),
        (codes < 0, raw.types, "unknown event type", "type", "unknown event type"),
        (given & (np.abs(raw.values) > MAX_VALUE), raw.values, VALUE_RANGE, "value", "out of range"),
        (
            weighing & given & (raw.values != 0) & (np.abs(raw.values) < MIN_VALUE),
            raw.values,
            VALUE_TINY,
            "value",
            "too small",
        ),
        (
            weighing & given & ((raw.values < low) | (raw.values > high)),
            raw.values,
            f"value of this event type must lie between {low:g} and {high:g}",
            "value",
            "out of range",
        ),
        (weighing & ~given, raw.types, "this event type needs a value", "value", "required"),
        (stamps_outside, _MicrosAsText(stamps), TIMESTAMP_RANGE, "timestamp", "out of range"),
        (
            np.zeros(len(stamps), dtype=bool) if oldest_us is None else stamps < oldest_us,
            _MicrosAsText(stamps),
            "timestamp is older than the interaction retention (RECSYS_INTERACTION_RETENTION_DAYS)",
            "timestamp",
            "expired",
        ),
    ]
    rejected = dict(raw.errors)
    for mask, column, reason, name, problem in checks:
        for k in np.flatnonzero(mask):
            rejected.setdefault(int(k), RowError(reason, column[int(k)], fields=(name,), problem=problem))
    return codes, rejected


@dataclass(frozen=True)
class _MicrosAsText:
    micros: Ints

    def __getitem__(self, k: int) -> str:
        try:
            return (EPOCH + timedelta(microseconds=int(self.micros[k]))).isoformat()
        except OverflowError:
            return f"{self.micros[k] / US:.0f} s since 1970"


def _invalid_ids(column: Labels | Sequence[str | None], known: set[str] | None = None) -> npt.NDArray[np.bool_]:
    labels = column if isinstance(column, Labels) else Labels.of(column)
    check = is_external_id if known is None else partial(_known_or_valid, known)
    valid = np.fromiter(map(check, labels.names), dtype=bool, count=len(labels.names))  # each id once
    return ~labels.of_names(valid)


# Ids a file import remembers across its chunks (valid ones, row ids by name), per kind: ~100 bytes each.
KNOWN_IDS_MAX = 1_000_000


def _known_or_valid(known: set[str], value: str | None) -> bool:
    if value in known:
        return True
    if not is_external_id(value):
        return False
    if len(known) < KNOWN_IDS_MAX:
        known.add(value)  # type: ignore[arg-type]  # valid: a string
    return True


# ---- events ready to store ----------------------------------------------------------------------


@dataclass
class EventArrays:
    """Events of existing users and items by database id; ``codes`` index ``EventRules.names``."""

    user_ids: Ints
    item_ids: Ints
    codes: Codes
    values: Floats  # NaN: no value
    timestamps: Ints  # microseconds since the epoch

    def __len__(self) -> int:
        return len(self.user_ids)


def events_deduplicate(events: EventArrays) -> EventArrays:
    """Sorted by the unique key (index-friendly inserts, locks in one order); of repeated events the last wins."""
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


# ---- impressions: what was shown ------------------------------------------------------------------

IMPRESSION_FIELDS = frozenset({"recommendation_id", "user", "items", "timestamp"})
# A display list longer than this is not one screen of recommendations.
MAX_ITEMS_PER_IMPRESSION = 1_000
# Shown items per request: bounds the memory of one batch (10,000 rows of 10 items is the usual shape).
MAX_IMPRESSIONS_PER_BATCH = 100_000
RECOMMENDATION_ID_PATTERN = r"[\x21-\x7e]{1,80}"  # visible ASCII: ids minted here and other systems' ids
_RECOMMENDATION_ID_RE = re.compile(RECOMMENDATION_ID_PATTERN)


def recommendation_id_field(row: dict[str, Any]) -> str | None:
    """A row's optional ``recommendation_id`` (an interaction's or an impression's); raises RowError."""
    value = row.get("recommendation_id")
    if value is None:
        return None
    if not isinstance(value, str) or not _RECOMMENDATION_ID_RE.fullmatch(value):
        raise RowError(
            "invalid recommendation id", value, fields=("recommendation_id",), problem="1-80 visible ASCII characters"
        )
    return value


@dataclass
class RawImpressions:
    """Impression rows of an API batch, column by column (``items`` in display order), with the rows
    found unreadable. One row is one display list; each of its items is one impression."""

    users: list[str | None]
    items: list[list[object]]
    recommendation_ids: list[str | None]
    timestamps: Ints  # microseconds since the epoch; NO_TIMESTAMP where the row has none
    errors: Rejections = field(default_factory=dict)


def impression_fields(row: object) -> tuple[str | None, list[object], str | None, int]:
    """(user, items, recommendation id, timestamp) of one impression object; raises RowError on its shape."""
    if not isinstance(row, dict):
        raise RowError("not a JSON object", fields=("non_field_errors",), problem="not an object")
    if not IMPRESSION_FIELDS.issuperset(row):
        unknown = sorted(set(row) - IMPRESSION_FIELDS)
        raise RowError("unknown field(s)", ", ".join(unknown), fields=unknown, problem="unknown field")
    missing = [name for name in ("user", "items") if name not in row]
    if missing:
        raise RowError("missing field(s)", ", ".join(missing), fields=missing, problem="required")
    items = row["items"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS_PER_IMPRESSION:
        raise RowError(
            f"items must be a list of 1 to {MAX_ITEMS_PER_IMPRESSION:,} item ids",
            fields=("items",),
            problem="not a list of 1-1000 ids",
        )
    stamp = row.get("timestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise RowError("timestamp must be an ISO 8601 string", stamp, fields=("timestamp",), problem="not a string")
    user = row["user"]
    return (
        user if isinstance(user, str) else None,
        items,
        recommendation_id_field(row),
        NO_TIMESTAMP if stamp is None else iso_micros(stamp),
    )


def batch_impressions_read(rows: Sequence[object]) -> RawImpressions:
    """The rows of an API batch of impressions."""
    read = RawImpressions([], [], [], np.empty(len(rows), dtype=np.int64))
    for k, row in enumerate(rows):
        try:
            user, items, recommendation_id, micros = impression_fields(row)
        except RowError as error:
            read.errors[k] = error
            user, items, recommendation_id, micros = None, [], None, NO_TIMESTAMP
        read.users.append(user)
        read.items.append(items)
        read.recommendation_ids.append(recommendation_id)
        read.timestamps[k] = micros
    return read


def impressions_check(raw: RawImpressions, *, now_us: int, issued_us: Ints, oldest_us: int | None) -> Rejections:
    """The rows rejected (first reason wins). Rows without a timestamp take ``issued_us`` (the time their
    recommendation id was minted, when it is one of ours: a re-send stays the same impression) or
    ``now_us`` (in place). ``oldest_us``: the retention horizon, older rows would be dropped at once."""
    stamps = raw.timestamps
    missing = stamps == NO_TIMESTAMP
    stamps[missing] = np.where(issued_us[missing] != NO_TIMESTAMP, issued_us[missing], now_us)
    too_old = np.zeros(len(stamps), dtype=bool) if oldest_us is None else stamps < oldest_us
    checks: list[tuple[npt.NDArray[np.bool_], Any, str, str, str]] = [
        (_invalid_ids(raw.users), raw.users, "invalid user id", "user", "invalid id"),
        (
            (stamps < 0) | (stamps > now_us + _MAX_SKEW_US),
            _MicrosAsText(stamps),
            TIMESTAMP_RANGE,
            "timestamp",
            "out of range",
        ),
        (too_old, _MicrosAsText(stamps), "timestamp is older than the impression retention", "timestamp", "expired"),
    ]
    rejected = dict(raw.errors)
    for mask, column, reason, name, problem in checks:
        for k in np.flatnonzero(mask):
            rejected.setdefault(int(k), RowError(reason, column[int(k)], fields=(name,), problem=problem))
    return rejected


def invalid_item_error(value: object) -> RowError:
    """One shown item whose id is not an id: that item is rejected, the row's others are kept."""
    return RowError("invalid item id", value, fields=("items",), problem="invalid id")
