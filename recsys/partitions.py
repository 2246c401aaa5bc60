"""Partitions of recsys_interaction, by month when recent and by year before: create, split DEFAULT, drop, load.

The one module that speaks DDL to the interaction partitions. A partition covers a ``Span`` of whole
calendar months (UTC): one month from ``RECSYS_PARTITIONS_MONTHLY_MONTHS`` months ago on (and the months
ahead that beat creates), one calendar year before that, cut short where another partition already
holds part of it. It is named after its span (``recsys_interaction_pYYYYMM`` for a month,
``recsys_interaction_pYYYY`` for a year, ``recsys_interaction_pYYYYMM_YYYYMM`` otherwise); rows outside
every partition land in ``recsys_interaction_default`` (a safety net) until a partition for their span is
created, which moves them. Bulk imports fill a standalone table per fresh span, build its indexes after
the COPY and attach it (``partition_load_*``); maintenance merges an old year split over several
partitions into one the same way (``partitions_roll_up``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from recsys.db import ddl_lock_timeout, lock_not_available, unless_locked

logger = logging.getLogger(__name__)
T = TypeVar("T")

PARENT = "recsys_interaction"
DEFAULT = "recsys_interaction_default"
LOAD_PREFIX = "recsys_interaction_load_"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
# The parent's indexes and constraints as a loaded month table gets them before it is attached:
# ATTACH PARTITION adopts an equivalent index or constraint instead of building it again. Each index is a
# statement of its own (the keys' indexes become their constraints after), so that an import can build them
# at once on connections of their own (``partition_load_index``).
_LOAD_INDEXES = (
    "CREATE UNIQUE INDEX {t}_event ON {t} (user_id, item_id, event_type, timestamp)",
    "CREATE UNIQUE INDEX {t}_pkey ON {t} (id, timestamp)",
    "CREATE INDEX {t}_history ON {t} (user_id, timestamp DESC, id DESC)",
    "CREATE INDEX {t}_item_time ON {t} (item_id, timestamp)",
    "CREATE INDEX {t}_created ON {t} USING brin (created_at)",
)
_LOAD_EVENT_INDEX = _LOAD_INDEXES[0]
_LOAD_KEYS = (
    "ALTER TABLE {t} ADD CONSTRAINT {t}_event UNIQUE USING INDEX {t}_event",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_pkey PRIMARY KEY USING INDEX {t}_pkey",
)
_LOAD_INDEX_SUFFIXES = ("event", "pkey", "history", "item_time", "created")
# Of repeated events (one key in two chunks of a file), the later row (higher id) wins.
_LOAD_DEDUPLICATE = """
    DELETE FROM {t} a USING {t} b
    WHERE (a.user_id, a.item_id, a.event_type, a.timestamp) = (b.user_id, b.item_id, b.event_type, b.timestamp)
      AND a.id < b.id
"""


@dataclass(frozen=True, order=True)
class Span:
    """A partition's range of timestamps, from the first day of ``lower``'s month (included) to the first
    day of ``upper``'s (excluded), UTC."""

    lower: date
    upper: date

    @classmethod
    def month(cls, month: date) -> Span:
        return cls(month, month_add(month, 1))

    @property
    def name(self) -> str:
        lower, upper = self.lower, self.upper
        if upper == month_add(lower, 1):
            return f"{PARENT}_p{lower.year:04d}{lower.month:02d}"
        if lower.month == 1 and upper == date(lower.year + 1, 1, 1):
            return f"{PARENT}_p{lower.year:04d}"
        return f"{PARENT}_p{lower.year:04d}{lower.month:02d}_{upper.year:04d}{upper.month:02d}"

    def bounds(self) -> tuple[str, str]:
        return f"{self.lower.isoformat()} 00:00:00+00", f"{self.upper.isoformat()} 00:00:00+00"

    def ends(self) -> datetime:
        return datetime.combine(self.upper, datetime.min.time(), UTC)

    def holds(self, month: date) -> bool:
        return self.lower <= month < self.upper

    def overlaps(self, other: Span) -> bool:
        return self.lower < other.upper and other.lower < self.upper


@dataclass(frozen=True)
class Partition:
    name: str
    span: Span


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def month_add(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def monthly_from(*, now: datetime) -> date:
    """The first month that gets a partition of its own: ``RECSYS_PARTITIONS_MONTHLY_MONTHS`` before now's
    (January of year 1 at the earliest: a window longer than the calendar makes every month monthly)."""
    this_month = month_of(now)
    to_year_one = (this_month.year - 1) * 12 + this_month.month - 1
    return month_add(this_month, -min(settings.RECSYS_PARTITIONS_MONTHLY_MONTHS, to_year_one))


def span_for(month: date, *, taken: Iterable[Span], recent_from: date) -> Span:
    """The span of a new partition for ``month`` (which no span in ``taken`` holds): the month itself from
    ``recent_from`` on; before it the month's calendar year, ending at ``recent_from`` at the latest. Either
    is cut short by the spans ``taken`` (the partitions there now) on both sides, so they never overlap: a
    database partitioned by month before keeps its months, and a year's gaps between them become one
    partition each."""
    if month >= recent_from:
        lower, upper = month, month_add(month, 1)
    else:
        lower, upper = date(month.year, 1, 1), min(date(month.year + 1, 1, 1), recent_from)
    for span in taken:
        if span.holds(month):
            raise ValueError(f"{month} is already in {span.name}")
        if span.upper <= month:
            lower = max(lower, span.upper)
        elif span.lower > month:
            upper = min(upper, span.lower)
    return Span(lower, upper)


@contextmanager
def _cursor() -> Iterator[psycopg.Cursor[Any]]:
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def partitions_list() -> list[Partition]:
    """The range partitions attached now, oldest first (the DEFAULT partition is not one)."""
    with _cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            lower, upper = (month_of(datetime.fromisoformat(match.group(k))) for k in (1, 2))
            found.append(Partition(name, Span(lower, upper)))
    return sorted(found, key=lambda p: p.span)


def partition_span(*, month: date, recent_from: date) -> Span:
    """The span of the partition that holds ``month``: the one attached now, else the one that
    ``span_for`` would create."""
    taken = [p.span for p in partitions_list()]
    return next((span for span in taken if span.holds(month)), None) or span_for(
        month, taken=taken, recent_from=recent_from
    )


def partition_create(*, span: Span) -> bool:
    """Create the partition of ``span`` unless a partition overlaps it, moving its rows out of DEFAULT
    (PostgreSQL refuses to create a partition whose range has rows there). Returns whether it was created."""
    lower, upper = span.bounds()
    with transaction.atomic(), _cursor() as cursor, ddl_lock_timeout(cursor):
        cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
        if any(p.span.overlaps(span) for p in partitions_list()):
            return False
        cursor.execute("DROP TABLE IF EXISTS pg_temp.recsys_partition_moving")
        cursor.execute(
            f"CREATE TEMP TABLE recsys_partition_moving ON COMMIT DROP AS WITH moved AS ("
            f" DELETE FROM {DEFAULT} WHERE timestamp >= %s AND timestamp < %s RETURNING *) SELECT * FROM moved",
            [lower, upper],
        )
        cursor.execute(f"CREATE TABLE {span.name} PARTITION OF {PARENT} FOR VALUES FROM ('{lower}') TO ('{upper}')")
        cursor.execute(f"INSERT INTO {span.name} SELECT * FROM recsys_partition_moving")
    return True


def partitions_ensure(*, now: datetime, ahead: int) -> list[str]:
    """Partitions from this month to ``ahead`` months on, and for every month that has rows in DEFAULT
    (a year's partition for those before ``monthly_from``, see ``span_for``)."""
    with _cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT date_trunc('month', timestamp AT TIME ZONE 'UTC')::date FROM {DEFAULT}")
        months = {row[0] for row in cursor.fetchall()}
    this_month = month_of(now)
    months.update(month_add(this_month, k) for k in range(ahead + 1))
    recent_from, taken, created = monthly_from(now=now), [p.span for p in partitions_list()], []
    for month in sorted(months):
        if any(span.holds(month) for span in taken):
            continue
        span = span_for(month, taken=taken, recent_from=recent_from)
        taken.append(span)
        if unless_locked(partial(partition_create, span=span), f"creating {span.name}"):
            created.append(span.name)
    return created


def partitions_drop_before(*, cutoff: datetime) -> list[str]:
    """Drop the partitions that hold nothing at or after ``cutoff`` (whole tables: no DELETE, no vacuum; a
    year's partition therefore goes only once its whole year is past the cutoff) and delete DEFAULT's rows
    older than it. Returns the names of the partitions dropped."""
    dropped = []
    for partition in partitions_list():
        if partition.span.ends() <= cutoff:

            def drop(name: str = partition.name) -> bool:
                with transaction.atomic(), _cursor() as cursor, ddl_lock_timeout(cursor):
                    _drop(cursor, name)
                return True

            if unless_locked(drop, f"dropping {partition.name}"):
                dropped.append(partition.name)
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(f"DELETE FROM {DEFAULT} WHERE timestamp < %s", [cutoff])
    return dropped


def partitions_roll_up(*, now: datetime) -> list[str]:
    """Merge the oldest calendar year that lies wholly before ``monthly_from`` and is split over several
    partitions (months of the layout before, or months that aged out of the monthly window) into one
    partition of the year, keeping every row and id; one year a run bounds a run's work. Writes to that
    year wait while its rows are copied and indexed; reads wait only for the swap. Returns the name of the
    partition made, if any."""
    recent_from, found = monthly_from(now=now), partitions_list()
    years: dict[int, list[Partition]] = {}
    for partition in found:
        year = partition.span.lower.year
        if partition.span.upper <= min(date(year + 1, 1, 1), recent_from):
            years.setdefault(year, []).append(partition)
    split = [
        y
        for y, parts in sorted(years.items())
        if len(parts) > 1
        and date(y + 1, 1, 1) <= recent_from
        and all(p in parts for p in found if p.span.overlaps(Span(date(y, 1, 1), date(y + 1, 1, 1))))
    ]
    if not split:
        return []
    span, parts = Span(date(split[0], 1, 1), date(split[0] + 1, 1, 1)), years[split[0]]
    table = partition_load_create(span=span)
    try:
        with transaction.atomic(), _cursor() as cursor:
            for partition in parts:  # (EXCLUSIVE: writes to that old year wait, reads do not)
                cursor.execute(f"LOCK TABLE {partition.name} IN EXCLUSIVE MODE")
                cursor.execute(f"INSERT INTO {table} SELECT * FROM {partition.name}")
            _load_index(cursor, table)

            def swap() -> None:
                for partition in parts:
                    _drop(cursor, partition.name)
                _load_attach(cursor, table, span)

            _retried_while_busy(cursor, swap, f"rolling up {span.name}")
    finally:
        partition_load_drop(table=table)  # a no-op once attached (renamed)
    return [span.name]


def _drop(cursor: psycopg.Cursor[Any], table: str) -> None:
    """DROP refuses a table with foreign-key checks still deferred in this transaction: run them first."""
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    cursor.execute(f"DROP TABLE {table}")
    cursor.execute("SET CONSTRAINTS ALL DEFERRED")  # Django's foreign keys are all DEFERRABLE INITIALLY DEFERRED


def partitions_maintain() -> dict[str, list[str]]:
    """Create the months ahead (and partitions for DEFAULT's rows), drop expired ones, merge an old year split
    over several partitions into one, drop crashed loads' tables."""
    now = timezone.now()
    created = partitions_ensure(now=now, ahead=settings.RECSYS_PARTITIONS_AHEAD)
    dropped: list[str] = []
    if settings.RECSYS_INTERACTION_RETENTION_DAYS:
        dropped = partitions_drop_before(cutoff=now - timedelta(days=settings.RECSYS_INTERACTION_RETENTION_DAYS))
    # after retention: what is dropped is not copied first
    rolled_up = unless_locked(partial(partitions_roll_up, now=now), "rolling up a year") or []
    return {"created": created, "dropped": dropped, "rolled_up": rolled_up, "loads_swept": partition_loads_sweep()}


# ---- bulk loads into fresh spans ----------------------------------------------------------------------


def span_is_fresh(*, span: Span) -> bool:
    """Whether ``span`` holds no interaction yet: no partition or an empty one, and no row in DEFAULT."""
    lower, upper = span.bounds()
    with _cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [span.name])
        if cursor.fetchone()[0]:  # type: ignore[index]
            cursor.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {span.name})")
            if not cursor.fetchone()[0]:  # type: ignore[index]
                return False
        cursor.execute(
            f"SELECT NOT EXISTS (SELECT 1 FROM {DEFAULT} WHERE timestamp >= %s AND timestamp < %s)", [lower, upper]
        )
        return bool(cursor.fetchone()[0])  # type: ignore[index]


def partition_load_create(*, span: Span) -> str:
    """A standalone table shaped like the interactions, without indexes, to COPY one span into; committed
    at once so that a chunk's retried transaction keeps it. Named after this session, so that a crashed
    load's table is found and dropped (``partition_loads_sweep``).

    It holds the span's range as a CHECK from the start: each COPYed row is checked as it arrives (no
    scan of its own), and ATTACH, finding the constraint valid, skips its scan of the table."""
    partition_loads_sweep()
    lower, upper = span.bounds()
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]  # type: ignore[index]
        table = f"{LOAD_PREFIX}{pid}_{span.lower.year:04d}{span.lower.month:02d}_{secrets.token_hex(3)}"
        cursor.execute(
            f"CREATE TABLE {table} (LIKE {PARENT} INCLUDING DEFAULTS,"
            f" CONSTRAINT {table}_range CHECK (timestamp >= '{lower}' AND timestamp < '{upper}'))"
        )
    return table


def partition_load_index(*, table: str) -> None:
    """Build a loaded span's indexes all at once, each on a connection of its own that commits it, before
    ``partition_load_attach(indexed=True)``: the import's command is idle by then, and one connection
    building index after index leaves cores idle whenever a build gets no parallel worker (measured in
    BENCHMARKS.md, Ingestion). The table must be committed (a caller inside a transaction indexes in
    ``partition_load_attach`` instead). A table that repeats an event keeps no unique index
    here: the attach removes the repeats and builds it."""
    with ThreadPoolExecutor(max_workers=len(_LOAD_INDEXES), thread_name_prefix="import-index") as pool:
        for built in [pool.submit(_index_build_alone, statement.format(t=table)) for statement in _LOAD_INDEXES]:
            built.result()


def _index_build_alone(statement: str) -> None:
    """One index build in a transaction of this thread's own connection, closed after."""
    try:
        with transaction.atomic(), _cursor() as cursor:
            _index_memory_raise(cursor)
            cursor.execute(statement)
    except psycopg.errors.UniqueViolation:
        pass  # repeated events: ``_load_index`` removes them, then builds it
    finally:
        connection.close()


ATTACH_ATTEMPTS = 20
ATTACH_RETRY_SECONDS = 3


def partition_load_attach(*, table: str, span: Span, indexed: bool = False) -> int | None:
    """Index a loaded span's table (``indexed``: its indexes were built by ``partition_load_index``), make
    the keys' indexes its constraints and attach it as the span's partition (dropping an empty one of the
    same span); returns how many events it brought. None, leaving the table as it is, when the span got
    rows or another partition overlaps it meanwhile (the caller merges them instead). The attach's
    locks are waited for DDL_LOCK_TIMEOUT_MS at a time (the table stays usable meanwhile), up to
    ATTACH_ATTEMPTS times."""
    with transaction.atomic(), _cursor() as cursor:
        loaded = _load_index(cursor, table, built=indexed)

        def attach() -> bool:
            if not _span_cleared(cursor, span):
                return False
            _load_attach(cursor, table, span)
            return True

        if not _retried_while_busy(cursor, attach, f"attaching {table}"):
            transaction.set_rollback(True)
            return None
    return loaded


def _retried_while_busy(cursor: psycopg.Cursor[Any], work: Callable[[], T], what: str) -> T:
    """``work()`` in a savepoint whose lock waits are bounded (DDL_LOCK_TIMEOUT_MS), tried up to
    ATTACH_ATTEMPTS times ATTACH_RETRY_SECONDS apart while its tables are busy: what the caller's
    transaction did before (a year copied, indexes built) is kept between tries."""
    for attempt in range(1, ATTACH_ATTEMPTS + 1):
        try:
            with transaction.atomic(), ddl_lock_timeout(cursor):
                return work()
        except Exception as error:
            if not lock_not_available(error) or attempt == ATTACH_ATTEMPTS:
                raise
            logger.warning("%s waits for a busy table (attempt %d)", what, attempt)
            time.sleep(ATTACH_RETRY_SECONDS)
    raise AssertionError("unreachable")


def _load_index(cursor: psycopg.Cursor[Any], table: str, *, built: bool = False) -> int:
    """Build a load table's indexes (only the unique one if missing when the others are ``built``), make the
    keys' indexes its constraints; returns its row count."""
    _index_memory_raise(cursor)
    if not built or not _relation_exists(cursor, f"{table}_event"):
        _event_index_build(cursor, table)
    if not built:
        for statement in _LOAD_INDEXES[1:]:
            cursor.execute(statement.format(t=table))
    for statement in _LOAD_KEYS:
        cursor.execute(statement.format(t=table))
    cursor.execute(f"SELECT count(*) FROM {table}")
    return int(cursor.fetchone()[0])  # type: ignore[index]


def _index_memory_raise(cursor: psycopg.Cursor[Any]) -> None:
    """``maintenance_work_mem`` for this transaction's index builds: a span's sorts stay in memory."""
    cursor.execute(
        "SELECT set_config('maintenance_work_mem', %s, true)", [f"{settings.RECSYS_IMPORT_INDEX_MEMORY_MB}MB"]
    )


def _relation_exists(cursor: psycopg.Cursor[Any], name: str) -> bool:
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    return bool(cursor.fetchone()[0])  # type: ignore[index]


def _load_attach(cursor: psycopg.Cursor[Any], table: str, span: Span) -> None:
    """Attach an indexed load table as ``span``'s partition, with the rows the API stored for that span
    meanwhile (they went to DEFAULT)."""
    lower, upper = span.bounds()
    cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE timestamp >= %s AND timestamp < %s RETURNING *)"
        f" INSERT INTO {table} SELECT * FROM moved ON CONFLICT DO NOTHING",
        [lower, upper],
    )
    cursor.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {table} FOR VALUES FROM ('{lower}') TO ('{upper}')")
    cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_range")
    cursor.execute(f"ALTER TABLE {table} RENAME TO {span.name}")
    for suffix in _LOAD_INDEX_SUFFIXES:
        cursor.execute(f"ALTER INDEX {table}_{suffix} RENAME TO {span.name}_{suffix}")


def _span_cleared(cursor: psycopg.Cursor[Any], span: Span) -> bool:
    """Drop the empty partition of exactly ``span`` (beat's month ahead, say); False when a partition
    overlapping it holds rows or covers another span."""
    for partition in partitions_list():
        if not partition.span.overlaps(span):
            continue
        if partition.span != span:
            return False
        cursor.execute(f"LOCK TABLE {partition.name} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {partition.name})")
        if cursor.fetchone()[0]:  # type: ignore[index]
            return False
        _drop(cursor, partition.name)
    return True


def _event_index_build(cursor: psycopg.Cursor[Any], table: str) -> None:
    """The unique index of the event key, removing repeated events first only when building it finds some
    (rare: a key repeated across chunks of one file), so the common load pays one build and no self-join."""
    try:
        with transaction.atomic():
            cursor.execute(_LOAD_EVENT_INDEX.format(t=table))
    except psycopg.errors.UniqueViolation:
        cursor.execute(_LOAD_DEDUPLICATE.format(t=table))
        cursor.execute(_LOAD_EVENT_INDEX.format(t=table))


def partition_load_drop(*, table: str) -> None:
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")


def partition_loads_sweep() -> list[str]:
    """Drop load tables left by sessions that are gone (a crashed or killed import)."""
    with _cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relname LIKE %s AND NOT c.relispartition"
            " AND split_part(substr(c.relname, %s), '_', 1)::int NOT IN (SELECT pid FROM pg_stat_activity)",
            [LOAD_PREFIX.replace("_", r"\_") + "%", len(LOAD_PREFIX) + 1],
        )
        stale = [row[0] for row in cursor.fetchall()]
    for table in stale:
        partition_load_drop(table=table)
    return stale
