"""Every DML statement on impressions and attributions (partition DDL lives in ``partitions``).

Rows arrive as arrays bound as parameters and unnested in one statement per batch: no Python loop
of inserts, one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings

from recsys.ingestion.rules import Floats, Ints
from recsys.ingestion.writer import sql_cursor


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
        "user_ids": impressions.user_ids.tolist(),
        "item_ids": impressions.item_ids.tolist(),
        "positions": impressions.positions.tolist(),
        "micros": impressions.shown_at.tolist(),
        "recommendation_ids": list(impressions.recommendation_ids),
        "experiment_ids": list(impressions.experiment_ids),
        "variants": list(impressions.variants),
    }


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
# the probe to the window's partitions). Neither: not attributed. Re-sends are no-ops.
_ATTRIBUTIONS_INSERT = """
    INSERT INTO recsys_attribution (user_id, item_id, event_type, occurred_at, value, weight, recommendation_id,
                                    experiment_id, variant, shown_at, position, created_at)
    SELECT e.user_id, e.item_id, e.event_type, e.ts, nullif(e.value, 'NaN'), e.weight,
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
          AND (e.recommendation_id IS NULL OR i.recommendation_id = e.recommendation_id)
        ORDER BY i.shown_at DESC
        LIMIT 1
    ) AS shown ON true
    WHERE e.recommendation_id IS NOT NULL OR shown.shown_at IS NOT NULL
    ORDER BY e.user_id, e.item_id, e.event_type, e.ts
    ON CONFLICT (user_id, item_id, event_type, occurred_at) DO NOTHING
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


def attributions_write(clicks: ClickArrays, *, window_seconds: int | None = None) -> int:
    """Attribute click-type events (one statement per batch); returns how many attributions are new.

    ``window_seconds``: RECSYS_ATTRIBUTION_WINDOW unless given.
    """
    if not len(clicks):
        return 0
    window = settings.RECSYS_ATTRIBUTION_WINDOW if window_seconds is None else window_seconds
    with sql_cursor() as cursor:
        cursor.execute(_ATTRIBUTIONS_INSERT, {**_click_params(clicks), "window": window})
        return max(cursor.rowcount, 0)


def _click_params(clicks: ClickArrays) -> dict[str, Any]:
    return {
        "user_ids": clicks.user_ids.tolist(),
        "item_ids": clicks.item_ids.tolist(),
        "event_types": list(clicks.event_types),
        "values": clicks.values.tolist(),
        "weights": clicks.weights.tolist(),
        "micros": clicks.timestamps.tolist(),
        "recommendation_ids": list(clicks.recommendation_ids),
        "issued": list(clicks.issued_at),
        "experiment_ids": list(clicks.experiment_ids),
        "variants": list(clicks.variants),
    }


# Impressions that arrive after the click they led to (clients batch them): a click-type interaction
# of the same user and item within the window after an impression of this batch, not yet attributed,
# is credited to the latest such impression. An event attributed by its recommendation id before
# that id's impression arrived gets the impression's time and position. Nothing else changes: an
# attribution, once made, is not moved to another impression.
_LATE_ATTRIBUTIONS = """
    WITH shown AS (
        SELECT r.user_id, r.item_id, r.position, timestamptz 'epoch' + r.micros * interval '1 microsecond' AS shown_at,
               r.recommendation_id, r.experiment_id, r.variant
        FROM unnest(%(user_ids)s::int8[], %(item_ids)s::int8[], %(positions)s::int4[], %(micros)s::int8[],
                    %(recommendation_ids)s::text[], %(experiment_ids)s::int8[], %(variants)s::text[])
             AS r(user_id, item_id, position, micros, recommendation_id, experiment_id, variant)
    ),
    led AS (
        SELECT DISTINCT ON (x.user_id, x.item_id, x.event_type, x.timestamp)
               x.user_id, x.item_id, x.event_type, x.timestamp, x.value, x.weight,
               s.recommendation_id, s.experiment_id, s.variant, s.shown_at, s.position
        FROM shown s
        JOIN recsys_interaction x ON x.user_id = s.user_id AND x.item_id = s.item_id
             AND x.timestamp BETWEEN s.shown_at AND s.shown_at + %(window)s * interval '1 second'
        WHERE x.event_type IN (SELECT name FROM recsys_eventtype WHERE counts_as_click)
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


def late_attributions_write(impressions: ImpressionArrays, *, window_seconds: int | None = None) -> int:
    """Attribute stored clicks that these impressions led to (see above); returns the rows written."""
    if not len(impressions):
        return 0
    window = settings.RECSYS_ATTRIBUTION_WINDOW if window_seconds is None else window_seconds
    with sql_cursor() as cursor:
        cursor.execute(_LATE_ATTRIBUTIONS, {**_impression_params(impressions), "window": window})
        return max(cursor.rowcount, 0)


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
