"""Reads behind the operator admin: cheap row counts, category choices, recent activity."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone

from recsys.ingestion.rules import MAX_CLOCK_SKEW
from recsys.models import EventType, Interaction, Item, User

logger = logging.getLogger(__name__)
# Below this many rows an exact COUNT(*) costs under a few milliseconds; above it the planner's
# estimate (pg_class.reltuples, kept by autovacuum/ANALYZE) is what an operator needs.
EXACT_COUNT_BELOW = 100_000
CATEGORY_CHOICES_SECONDS = 600  # a full unnest over the catalogue, at most every ten minutes
AWAITING_ENCODING_CAP = 10_000  # the dashboard's "10,000+": enough to see a backlog, not its size


@dataclass(frozen=True)
class RowCount:
    value: int
    exact: bool


def table_row_count(*, table: str) -> RowCount:
    """Rows of ``table``: the planner's estimate for big tables, an exact count of small ones."""
    with connection.cursor() as cursor:
        # A partitioned table has no rows of its own (reltuples -1): its estimate is its partitions' sum.
        cursor.execute(
            "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)"
            " FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid WHERE i.inhparent = c.oid)"
            " ELSE c.reltuples END::bigint FROM pg_class c WHERE c.oid = to_regclass(%s)",
            [table],
        )
        row = cursor.fetchone()
        estimate = int(row[0]) if row else -1
        if estimate >= EXACT_COUNT_BELOW:
            return RowCount(estimate, exact=False)
        # Never analysed (-1) or small: count, but stop at the threshold rather than scan millions.
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {connection.ops.quote_name(table)} LIMIT %s) AS t",
            [EXACT_COUNT_BELOW],
        )
        counted = int(cursor.fetchone()[0])
    return RowCount(counted, exact=counted < EXACT_COUNT_BELOW)


def awaiting_encoding_count(*, cap: int = AWAITING_ENCODING_CAP) -> RowCount | None:
    """Items the active content version has not encoded in their current form, counted up to ``cap``
    (``RowCount(cap, exact=False)``: that many or more); None when no content version is active.

    embeddings.content.items_awaiting_encoding counts every one of them; this stops at ``cap`` + 1 rows
    of the encoder's own condition (embeddings.vectors.rows). With few waiting the anti-join still reads
    the catalogue (no index answers "has no current vector"), as each encoder sweep does.
    """
    from embeddings.models import ActiveVersion, Kind
    from embeddings.vectors.rows import _UNENCODED

    # Only its id (its item table's name): the encoder state is megabytes.
    pointer = (
        ActiveVersion.objects.select_related("version").only("kind", "version__id").filter(kind=Kind.CONTENT).first()
    )
    if pointer is None:
        return None
    unencoded = _UNENCODED.format(table=connection.ops.quote_name(pointer.version.item_table))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM (SELECT 1 {unencoded} LIMIT %s) AS t", [cap + 1])
        counted = int(cursor.fetchone()[0])
    return RowCount(min(counted, cap), exact=counted <= cap)


def item_categories(*, limit: int = 50) -> list[str]:
    """The most common item categories (the item list's filter choices), cached for minutes."""
    key = f"admin:item-categories:{limit}"
    try:
        cached = cache.get(key)
    except Exception:  # Redis away: compute it, the page still loads
        cached = None
    if cached is not None:
        return list(cached)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c FROM recsys_item, unnest(categories) AS c GROUP BY c ORDER BY count(*) DESC, c LIMIT %s", [limit]
        )
        names = [row[0] for row in cursor.fetchall()]
    try:
        cache.set(key, names, CATEGORY_CHOICES_SECONDS)
    except Exception:
        logger.warning("could not cache the item categories", exc_info=True)
    return names


def user_recent_interactions(*, user_id: int, limit: int = 20) -> list[Interaction]:
    """A user's newest events with their items (the interaction_user_history index answers it)."""
    return list(
        Interaction.objects.filter(user_id=user_id)
        .select_related("item")
        .only("event_type", "value", "weight", "timestamp", "item__external_id", "item__title")
        .order_by("-timestamp", "-id")[:limit]
    )


def user_id_get(*, external_id: str) -> int | None:
    return User.objects.filter(external_id=external_id).values_list("pk", flat=True).first()


def items_by_external_id(*, external_ids: list[str]) -> dict[str, tuple[int, str]]:
    """external id → (database id, title) of the given items (to link lists to item pages)."""
    rows = Item.objects.filter(external_id__in=external_ids).values_list("external_id", "pk", "title")
    return {external_id: (pk, title) for external_id, pk, title in rows}


@dataclass(frozen=True)
class Activity:
    """Interactions per hour, oldest hour first: by when they happened and by when they arrived."""

    hours: list[datetime]
    by_event: list[int]
    by_arrival: list[int]


def interactions_activity(*, hours: int = 48, now: datetime | None = None) -> Activity:
    """Interactions per hour over the last ``hours`` (zeros included), by event time and by arrival.

    An import of last month's events arrives within one hour but happened over weeks: event time
    shows the traffic, arrival time the ingestion. Event time has no index of its own, but no
    event is accepted more than MAX_CLOCK_SKEW ahead of its arrival, so the events of the window
    arrived after its start minus that skew: the BRIN index on arrival bounds both reads.
    """
    end = (now or timezone.now()).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    arrived_since = Interaction.objects.filter(created_at__gte=start - MAX_CLOCK_SKEW)
    by_event = _per_hour(arrived_since.filter(timestamp__gte=start, timestamp__lt=end), "timestamp")
    by_arrival = _per_hour(arrived_since.filter(created_at__gte=start, created_at__lt=end), "created_at")
    window = [start + timedelta(hours=h) for h in range(hours)]
    return Activity(window, [by_event.get(h, 0) for h in window], [by_arrival.get(h, 0) for h in window])


def _per_hour(interactions: QuerySet[Interaction], field: str) -> dict[datetime, int]:
    return dict(
        interactions.annotate(hour=TruncHour(field)).values("hour").annotate(n=Count("id")).values_list("hour", "n")
    )


def event_types_in_use(*, names: list[str]) -> list[str]:
    """Which of these event types some interaction has, in one statement. No index leads with
    event_type: each EXISTS stops at the type's first row, but an unused type's reads every partition
    (callers bound it with a statement timeout)."""
    used = Interaction.objects.filter(event_type=OuterRef("name"))
    return list(EventType.objects.filter(name__in=names).filter(Exists(used)).values_list("name", flat=True))
