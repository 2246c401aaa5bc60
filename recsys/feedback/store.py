"""Every DML statement on impressions and attributions (partition DDL lives in ``partitions``).

Rows arrive as arrays bound as parameters and unnested in one statement per batch: no Python loop
of inserts, one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings

from recsys.ingestion.rules import EPOCH, Floats, Ints
from recsys.ingestion.writer import (
    floats_literal,
    ints_literal,
    ints_or_nulls_literal,
    references_hold,
    sql_cursor,
    texts_literal,
)


@dataclass
class ImpressionArrays:
    """Impressions of existing users and items by database id, one per shown item."""

    user_ids: Ints
    item_ids: Ints
    positions: Ints  # 1-based display order
    shown_at: Ints  # microseconds since the epoch
    recommendation_ids: Sequence[str | None]
    experiment_ids: Sequence[int | None]
    variants: Sequence[str | None]

    def __len__(self) -> int:
        return len(self.user_ids)


_IMPRESSIONS_INSERT = """
    INSERT INTO recsys_impression (user_id, item_id, position, shown_at, recommendation_id, experiment_id,
                                   variant, created_at)
    SELECT r.user_id, r.item_id, r.position, timestamptz 'epoch' + r.micros * interval '1 microsecond',
           r.recommendation_id, r.experiment_id, r.variant, now()
    FROM unnest(%(user_ids)s::int8[], %(item_ids)s::int8[], %(positions)s::int4[], %(micros)s::int8[],
                %(recommendation_ids)s::text[], %(experiment_ids)s::int8[], %(variants)s::text[])
         AS r(user_id, item_id, position, micros, recommendation_id, experiment_id, variant)
    ORDER BY r.user_id, r.item_id, r.micros
    ON CONFLICT DO NOTHING
"""


def impressions_write(impressions: ImpressionArrays) -> int:
    """Insert impressions whose partitions exist; a re-sent one is skipped. Returns how many were new."""
    if not len(impressions):
        return 0
    with sql_cursor() as cursor:
        cursor.execute(_IMPRESSIONS_INSERT, _impression_params(impressions))
        return max(cursor.rowcount, 0)


def _impression_params(impressions: ImpressionArrays) -> dict[str, Any]:
    return {
        "user_ids": ints_literal(impressions.user_ids),
        "item_ids": ints_literal(impressions.item_ids),
        "positions": ints_literal(impressions.positions),
        "micros": ints_literal(impressions.shown_at),
        "recommendation_ids": texts_literal(impressions.recommendation_ids),
        "experiment_ids": ints_or_nulls_literal(impressions.experiment_ids),
        "variants": texts_literal(impressions.variants),
    }


def _moment(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


# ---- attribution -----------------------------------------------------------------------------------


@dataclass
class ClickArrays:
    """Stored click-type events of a batch, with what their rows said about the recommendation."""

    user_ids: Ints
    item_ids: Ints
    event_types: Sequence[str]
    values: Floats  # NaN: no value
    weights: Floats
    timestamps: Ints  # microseconds since the epoch
    recommendation_ids: Sequence[str | None]
    issued_at: Sequence[int | None]  # a recommendation id of ours: when it was minted (µs)
    experiment_ids: Sequence[int | None]
    variants: Sequence[str | None]

    def __len__(self) -> int:
        return len(self.user_ids)


# With a recommendation id: credited to it, with the time and position of the impression that
# showed the item under that id (if it was sent), looked for from a day before the id was minted
# (clients' clocks) so that only recent partitions are probed. Without one: credited to the latest
# impression of the item shown to the user within the window before the event, found by the
# (user, item, shown_at) prefix of the unique index, newest first (run-time partition pruning keeps
# the probe to the window's partitions). Neither: not attributed. Re-sends are no-ops. The bounds of
# the whole batch's windows are parameters as well, so that only their months' partitions are planned.
_ATTRIBUTIONS_INSERT = """
    INSERT INTO recsys_attribution AS a (user_id, item_id, event_type, occurred_at, value, weight, recommendation_id,
                                    experiment_id, variant, shown_at, position, created_at)
    SELECT DISTINCT ON (e.user_id, e.item_id, e.event_type, e.ts)  -- an event sent twice in a batch: once
           e.user_id, e.item_id, e.event_type, e.ts, nullif(e.value, 'NaN'), e.weight,
           coalesce(e.recommendation_id, shown.recommendation_id), coalesce(e.experiment_id, shown.experiment_id),
           coalesce(e.variant, shown.variant), shown.shown_at, shown.position, now()
    FROM (
        SELECT r.*, t.ts,
               CASE WHEN r.recommendation_id IS NULL THEN t.ts - %(window)s * interval '1 second'
                    ELSE coalesce(timestamptz 'epoch' + r.issued * interval '1 microsecond' - interval '1 day',
                                  '-infinity')
               END AS shown_from,
               CASE WHEN r.recommendation_id IS NULL THEN t.ts ELSE 'infinity' END AS shown_until
        FROM unnest(%(user_ids)s::int8[], %(item_ids)s::int8[], %(event_types)s::text[], %(values)s::float8[],
                    %(weights)s::float8[], %(micros)s::int8[], %(recommendation_ids)s::text[], %(issued)s::int8[],
                    %(experiment_ids)s::int8[], %(variants)s::text[])
             AS r(user_id, item_id, event_type, value, weight, micros, recommendation_id, issued, experiment_id,
                  variant)
        CROSS JOIN LATERAL (SELECT timestamptz 'epoch' + r.micros * interval '1 microsecond' AS ts) AS t
    ) AS e
    LEFT JOIN LATERAL (
        SELECT i.recommendation_id, i.experiment_id, i.variant, i.shown_at, i.position
        FROM recsys_impression i
        WHERE i.user_id = e.user_id AND i.item_id = e.item_id
          AND i.shown_at BETWEEN e.shown_from AND e.shown_until
          AND i.shown_at >= coalesce(%(since)s::timestamptz, '-infinity')
          AND i.shown_at <= coalesce(%(until)s::timestamptz, 'infinity')
          AND (e.recommendation_id IS NULL OR i.recommendation_id = e.recommendation_id)
        ORDER BY i.shown_at DESC
        LIMIT 1
    ) AS shown ON true
    WHERE (e.recommendation_id IS NOT NULL OR shown.shown_at IS NOT NULL) {still_there}
    ORDER BY e.user_id, e.item_id, e.event_type, e.ts
    ON CONFLICT (user_id, item_id, event_type, occurred_at) DO UPDATE
        SET shown_at = EXCLUDED.shown_at, position = EXCLUDED.position
        WHERE a.shown_at IS NULL AND EXCLUDED.shown_at IS NOT NULL
          AND a.recommendation_id IS NOT DISTINCT FROM EXCLUDED.recommendation_id
"""
# The pass after the events' transaction committed (``attributions_write(after_commit=True)``) runs in a
# transaction of its own, so its user and item may have been deleted since: only those still there.
_STILL_THERE = """
      AND EXISTS (SELECT 1 FROM recsys_user u WHERE u.id = e.user_id)
      AND EXISTS (SELECT 1 FROM recsys_item i WHERE i.id = e.item_id)
"""


_IMPRESSIONS_WITHIN = """
    SELECT EXISTS (
        SELECT 1 FROM recsys_impression
        WHERE shown_at BETWEEN timestamptz 'epoch' + %(first)s * interval '1 microsecond'
                                   - %(window)s * interval '1 second'
                           AND timestamptz 'epoch' + %(last)s * interval '1 microsecond'
    )
"""


def impressions_within(timestamps: Ints, *, window_seconds: int | None = None) -> bool:
    """Whether any impression was shown within the attribution window before the clicks at ``timestamps``
    (µs): without one, clicks that name no recommendation id have nothing to be credited to. Partition
    pruning makes this free for months without impressions (an import of history)."""
    window = settings.RECSYS_ATTRIBUTION_WINDOW if window_seconds is None else window_seconds
    with sql_cursor() as cursor:
        cursor.execute(
            _IMPRESSIONS_WITHIN, {"first": int(timestamps.min()), "last": int(timestamps.max()), "window": window}
        )
        return bool(cursor.fetchone()[0])  # type: ignore[index]


def attributions_write(clicks: ClickArrays, *, window_seconds: int | None = None, after_commit: bool = False) -> int:
    """Attribute click-type events (one statement per batch); returns how many attributions were written
    (new, or an id's attribution given the impression it was waiting for).

    In the transaction that wrote the events (``events_write``), whose check of their users and items under
    the references lock covers the attributions too (they have no foreign keys, migration 0009). Once that
    transaction has committed, the same clicks are attributed again (``after_commit``, a transaction of its
    own, under the references lock, users and items checked): an impression batch in flight at the same
    time could see neither the uncommitted clicks nor be seen by them, and one of the two passes that run
    after both commits does see the other's rows (``late_attributions_write`` has its own).

    ``window_seconds``: RECSYS_ATTRIBUTION_WINDOW unless given.
    """
    if not len(clicks):
        return 0
    window = settings.RECSYS_ATTRIBUTION_WINDOW if window_seconds is None else window_seconds
    since, until = _shown_bounds(clicks, window)
    statement = _ATTRIBUTIONS_INSERT.format(still_there=_STILL_THERE if after_commit else "")
    with sql_cursor() as cursor:
        if after_commit:
            references_hold(cursor)
        cursor.execute(statement, {**_click_params(clicks), "window": window, "since": since, "until": until})
        return max(cursor.rowcount, 0)


_ISSUED_SLACK_US = 86_400 * 1_000_000  # an id's impressions are looked for from a day before it was minted


def _shown_bounds(clicks: ClickArrays, window: int) -> tuple[datetime | None, datetime | None]:
    """When the impressions the statement looks for can have been shown, over the whole batch (None: unbounded).

    A click without an id: its window before it; with one of our ids: from a day before it was minted,
    with no upper bound (as in the statement); with another system's id: any time."""
    named = np.array([r is not None for r in clicks.recommendation_ids], dtype=bool)
    lows = clicks.timestamps - window * 1_000_000
    if named.any():
        issued = [clicks.issued_at[k] for k in np.flatnonzero(named).tolist()]
        if any(i is None for i in issued):
            return None, None
        lows = np.append(lows[~named], np.array(issued, dtype=np.int64) - _ISSUED_SLACK_US)
        return _moment(int(lows.min())), None
    return _moment(int(lows.min())), _moment(int(clicks.timestamps.max()))


def _click_params(clicks: ClickArrays) -> dict[str, Any]:
    return {
        "user_ids": ints_literal(clicks.user_ids),
        "item_ids": ints_literal(clicks.item_ids),
        "event_types": texts_literal(clicks.event_types),
        "values": floats_literal(clicks.values),
        "weights": floats_literal(clicks.weights),
        "micros": ints_literal(clicks.timestamps),
        "recommendation_ids": texts_literal(clicks.recommendation_ids),
        "issued": ints_or_nulls_literal(clicks.issued_at),
        "experiment_ids": ints_or_nulls_literal(clicks.experiment_ids),
        "variants": texts_literal(clicks.variants),
    }


# Impressions that arrive after the click they led to (clients batch them): a click-type interaction
# of the same user and item within the window after an impression of this batch, not yet attributed,
# is credited to the latest such impression. An event attributed by its recommendation id before
# that id's impression arrived gets the impression's time and position. Nothing else changes: an
# attribution, once made, is not moved to another impression.
#
# Most batches have nothing to credit (impressions usually arrive before their clicks), so the
# statement first asks, per user of the batch, whether any click-type interaction lies in the batch's
# window (one probe of the user's history index each, a tenth of the shown items), and probes the
# (user, item) pairs of those users only. Both probes are LATERAL subqueries, so that PostgreSQL
# drives them from the batch's rows rather than hashing the interactions table (it did, by size
# estimate, and the statement's cost grew with the table); the window's bounds are parameters, so
# only its months' partitions are planned.
_LATE_ATTRIBUTIONS = """
    WITH shown AS (
        SELECT r.user_id, r.item_id, r.position, timestamptz 'epoch' + r.micros * interval '1 microsecond' AS shown_at,
               r.recommendation_id, r.experiment_id, r.variant
        FROM unnest(%(user_ids)s::int8[], %(item_ids)s::int8[], %(positions)s::int4[], %(micros)s::int8[],
                    %(recommendation_ids)s::text[], %(experiment_ids)s::int8[], %(variants)s::text[])
             AS r(user_id, item_id, position, micros, recommendation_id, experiment_id, variant)
    ),
    click_types AS MATERIALIZED (
        SELECT ARRAY(SELECT name::text FROM recsys_eventtype WHERE counts_as_click) AS names
    ),
    clicked AS (
        SELECT u.user_id
        FROM (SELECT DISTINCT user_id FROM shown) AS u, click_types
        CROSS JOIN LATERAL (
            SELECT 1 FROM recsys_interaction x
            WHERE x.user_id = u.user_id AND x.timestamp BETWEEN %(since)s AND %(until)s
              AND x.event_type = ANY(click_types.names)
            LIMIT 1
        ) AS any_click
    ),
    led AS (
        SELECT DISTINCT ON (x.user_id, x.item_id, x.event_type, x.timestamp)
               x.user_id, x.item_id, x.event_type, x.timestamp, x.value, x.weight,
               s.recommendation_id, s.experiment_id, s.variant, s.shown_at, s.position
        FROM shown s
        JOIN clicked USING (user_id)
        CROSS JOIN click_types
        CROSS JOIN LATERAL (
            SELECT x.user_id, x.item_id, x.event_type, x.timestamp, x.value, x.weight FROM recsys_interaction x
            WHERE x.user_id = s.user_id AND x.item_id = s.item_id AND x.event_type = ANY(click_types.names)
              AND x.timestamp BETWEEN s.shown_at AND s.shown_at + %(window)s * interval '1 second'
              AND x.timestamp BETWEEN %(since)s AND %(until)s
        ) AS x
        ORDER BY x.user_id, x.item_id, x.event_type, x.timestamp, s.shown_at DESC
    )
    INSERT INTO recsys_attribution AS a (user_id, item_id, event_type, occurred_at, value, weight, recommendation_id,
                                         experiment_id, variant, shown_at, position, created_at)
    SELECT user_id, item_id, event_type, timestamp, value, weight, recommendation_id, experiment_id, variant,
           shown_at, position, now()
    FROM led
    ORDER BY user_id, item_id, event_type, timestamp
    ON CONFLICT (user_id, item_id, event_type, occurred_at) DO UPDATE
        SET shown_at = EXCLUDED.shown_at, position = EXCLUDED.position
        WHERE a.shown_at IS NULL AND a.recommendation_id = EXCLUDED.recommendation_id
"""


# A click that named one of our recommendation ids before its impression arrived was attributed to that
# id with no impression yet; an impression of this batch with the same id, user and item is the one it
# was waiting for (the latest of them, shown before the click or after), whatever else the batch showed
# and whenever: as the click's own pass would have taken it (``_ATTRIBUTIONS_INSERT``, an id's window).
_PENDING_IDS = """
    UPDATE recsys_attribution a SET shown_at = s.shown_at, position = s.position
    FROM (
        SELECT DISTINCT ON (r.user_id, r.item_id, r.recommendation_id)
               r.user_id, r.item_id, r.recommendation_id, r.position,
               timestamptz 'epoch' + r.micros * interval '1 microsecond' AS shown_at
        FROM unnest(%(user_ids)s::int8[], %(item_ids)s::int8[], %(positions)s::int4[], %(micros)s::int8[],
                    %(recommendation_ids)s::text[])
             AS r(user_id, item_id, position, micros, recommendation_id)
        WHERE r.recommendation_id IS NOT NULL
        ORDER BY r.user_id, r.item_id, r.recommendation_id, r.micros DESC
    ) AS s
    WHERE a.user_id = s.user_id AND a.item_id = s.item_id AND a.recommendation_id = s.recommendation_id
      AND a.shown_at IS NULL
"""


def late_attributions_write(impressions: ImpressionArrays, *, window_seconds: int | None = None) -> int:
    """Attribute stored clicks that these impressions led to (see above); returns the rows written.

    Called in the transaction that writes the impressions and again once it has committed (a click batch
    in flight at the same time is seen by one of the passes that follow both commits; see
    ``attributions_write``): every statement here is idempotent."""
    if not len(impressions):
        return 0
    window = settings.RECSYS_ATTRIBUTION_WINDOW if window_seconds is None else window_seconds
    since = _moment(int(impressions.shown_at.min()))
    until = _moment(int(impressions.shown_at.max())) + timedelta(seconds=window)
    params = {**_impression_params(impressions), "window": window, "since": since, "until": until}
    with sql_cursor() as cursor:
        # Attributions have no foreign keys (migration 0009): under the references lock, taken before the
        # statement reads the interactions it credits, a deleted user's or item's are gone from its snapshot.
        references_hold(cursor)
        written = 0
        if any(impressions.recommendation_ids):
            cursor.execute(_PENDING_IDS, params)
            written += max(cursor.rowcount, 0)
        cursor.execute(_LATE_ATTRIBUTIONS, params)
        return written + max(cursor.rowcount, 0)


# ---- training: shown and never used ---------------------------------------------------------------

# Distinct (user, item) pairs shown to a user who has no interaction with that item; the anti-join
# probes the (user_id, item_id, ...) prefix of the interactions' unique index.
_UNUSED_COPY = """
    COPY (
        SELECT DISTINCT i.user_id, i.item_id FROM recsys_impression i
        WHERE NOT EXISTS (SELECT 1 FROM recsys_interaction x WHERE x.user_id = i.user_id AND x.item_id = i.item_id)
    ) TO STDOUT (FORMAT BINARY)
"""
_PAIR_ROW = np.dtype([("fields", ">i2"), ("user_len", ">i4"), ("user", ">i8"), ("item_len", ">i4"), ("item", ">i8")])
_COPY_HEADER_BYTES = 19  # signature, flags, extension length (0)


def impressions_unused_read() -> tuple[Ints, Ints]:
    """(user_ids, item_ids) of every item shown to a user who never interacted with it, one pair each."""
    with sql_cursor() as cursor, cursor.copy(_UNUSED_COPY) as copy:
        data = b"".join(bytes(block) for block in copy)
    rows = np.frombuffer(data[_COPY_HEADER_BYTES:-2], dtype=_PAIR_ROW)
    return rows["user"].astype(np.int64), rows["item"].astype(np.int64)
