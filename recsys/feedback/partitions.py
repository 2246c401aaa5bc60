"""The monthly partitions of ``recsys_impression``: named by month, created ahead and on demand, dropped
whole once older than RECSYS_IMPRESSION_RETENTION_DAYS. The only module that runs DDL on that table."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from recsys.db import ddl_lock_timeout, unless_locked
from recsys.ingestion.rules import Ints

TABLE = "recsys_impression"
_NAME_RE = re.compile(rf"{TABLE}_y(\d{{4}})m(\d{{2}})")
# Partition DDL of concurrent writers is serialised on this advisory lock (an arbitrary constant).
_DDL_LOCK = 0x1A7E55
# The beat task keeps this many months after the current one created, so that ingest rarely has to.
MONTHS_AHEAD = 2


@dataclass
class PartitionReport:
    """What a maintenance pass did: partitions by month start."""

    created: list[date] = field(default_factory=list)
    dropped: list[date] = field(default_factory=list)


def partition_name(month: date) -> str:
    return f"{TABLE}_y{month.year:04d}m{month.month:02d}"


def month_start(moment: datetime | date) -> date:
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_of(micros: Ints) -> list[date]:
    """The distinct months (their first day, UTC) of timestamps in microseconds since the epoch."""
    if not len(micros):
        return []
    months = np.unique(micros.astype("datetime64[us]").astype("datetime64[M]"))
    return [m.astype(date) for m in months.astype("datetime64[D]")]


def impression_partitions_list() -> list[date]:
    """The months that have a partition, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        names = [row[0] for row in cursor.fetchall()]
    return sorted(date(int(m[1]), int(m[2]), 1) for name in names if (m := _NAME_RE.fullmatch(name)))


def impression_partitions_ensure(*, months: Iterable[date]) -> list[date]:
    """Create the partitions of ``months`` that do not exist yet; returns the months created.

    One query when all exist (every ingest batch asks); otherwise DDL under an advisory lock in a
    transaction of its own, so that concurrent writers create each partition once.
    """
    wanted = sorted({month_start(m) for m in months})
    if not wanted:
        return []
    names = [partition_name(m) for m in wanted]
    with connection.cursor() as cursor:
        cursor.execute("SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL", [names])
        missing = {row[0] for row in cursor.fetchall()}
    if not missing:
        return []
    created: list[date] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_LOCK])
        with ddl_lock_timeout(cursor):  # behind a long reader: a 503 "retry shortly", not a frozen table
            for month in wanted:
                if partition_name(month) in missing and _partition_create(cursor, month):
                    created.append(month)
    return created


def _partition_create(cursor: CursorWrapper, month: date) -> bool:
    name = partition_name(month)
    cursor.execute("SELECT to_regclass(%s) IS NULL", [name])
    row = cursor.fetchone()
    if not (row and row[0]):
        return False  # a concurrent writer made it while we waited for the lock
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime(next_month(month).year, next_month(month).month, 1, tzinfo=UTC)
    cursor.execute(f'CREATE TABLE "{name}" PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)', [start, end])
    return True


# Other apps name the oldest moment they still read impressions from (experiments: the start of those
# whose figures are still computed): retention keeps everything since. Callables, so that this module
# imports nothing above it.
retention_guards: list[Callable[[], datetime | None]] = []


def retention_horizon(*, now: datetime, retention_days: int) -> datetime | None:
    """The oldest moment kept (``None``: everything is kept): ``retention_days`` back, or earlier
    where a guard in ``retention_guards`` still reads from (an experiment's impressions and clicks
    must cover the same span as its conversions, which are never trimmed)."""
    if not retention_days:
        return None
    horizon = now - timedelta(days=retention_days)
    needed = [moment for guard in retention_guards if (moment := guard()) is not None]
    return min([horizon, *needed])


def impression_partitions_maintain(
    *, now: datetime | None = None, retention_days: int | None = None, months_ahead: int = MONTHS_AHEAD
) -> PartitionReport:
    """Create this month's and the next ``months_ahead`` months' partitions; drop every partition whose
    months lie wholly before the retention horizon (RECSYS_IMPRESSION_RETENTION_DAYS; 0 keeps all)."""
    now = now or datetime.now(UTC)
    if retention_days is None:
        retention_days = settings.RECSYS_IMPRESSION_RETENTION_DAYS
    months = [month_start(now)]
    for _ in range(months_ahead):
        months.append(next_month(months[-1]))
    created = unless_locked(partial(impression_partitions_ensure, months=months), "creating impression partitions")
    report = PartitionReport(created=created or [])
    horizon = retention_horizon(now=now, retention_days=retention_days)
    if horizon is None:
        return report
    expired = [m for m in impression_partitions_list() if next_month(m) <= horizon.date()]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_LOCK])
        # Foreign keys are deferred: checks still pending in an enclosing transaction would block the drop.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for month in expired:

            def drop(name: str = partition_name(month)) -> bool:
                with transaction.atomic(), ddl_lock_timeout(cursor):  # behind a long reader: the next run
                    cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
                return True

            if unless_locked(drop, f"dropping {partition_name(month)}"):
                report.dropped.append(month)
    return report
