"""Impressions: an API batch of display lists through the ingestion's rules and id resolution into
``recsys_impression`` (one row per shown item)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import chain, compress
from typing import cast

import numpy as np
from django.conf import settings

from recsys.db import atomic_with_retry
from recsys.errors import DomainError, PayloadTooLarge
from recsys.feedback.attribution import attribution_after_commit
from recsys.feedback.partitions import impression_partitions_ensure, months_of, retention_horizon
from recsys.feedback.store import ImpressionArrays, impressions_write, late_attributions_write
from recsys.ingestion.report import BatchResult
from recsys.ingestion.rules import (
    EPOCH,
    MAX_IMPRESSIONS_PER_BATCH,
    NO_TIMESTAMP,
    US,
    Ints,
    RawImpressions,
    Rejections,
    batch_impressions_read,
    impressions_check,
    invalid_item_error,
    micros_now,
    unknown_row_error,
)
from recsys.ingestion.writer import ids_resolve
from recsys.models import Item, User
from recsys.recommendation_ids import RecommendationRef, recommendation_id_read
from recsys.validation import is_external_id

ItemError = tuple[int, object, DomainError]  # (row, the item as sent, why it was rejected)


def impressions_ingest(*, rows: Sequence[object], auto_create_items: bool | None = None) -> BatchResult:
    """Store what was shown: each row's items in display order, one impression per item.

    Unknown users are created, unknown items too (as stubs) when allowed; valid rows and items are
    stored even when others are rejected; re-sending an impression changes nothing.
    """
    if auto_create_items is None:
        auto_create_items = settings.RECSYS_AUTO_CREATE_ITEMS
    raw = batch_impressions_read(rows)
    shown = sum(map(len, raw.items))
    if shown > MAX_IMPRESSIONS_PER_BATCH:
        raise PayloadTooLarge(
            f"at most {MAX_IMPRESSIONS_PER_BATCH:,} shown items per request, got {shown:,}",
            details={"max_items": MAX_IMPRESSIONS_PER_BATCH, "items": shown},
        )
    refs = [recommendation_id_read(value) if value else None for value in raw.recommendation_ids]
    horizon = retention_horizon(now=datetime.now(UTC), retention_days=settings.RECSYS_IMPRESSION_RETENTION_DAYS)
    rejected = impressions_check(
        raw,
        now_us=micros_now(),
        issued_us=np.array([_issued_micros(ref) for ref in refs], dtype=np.int64),
        oldest_us=None if horizon is None else int((horizon - EPOCH).total_seconds() * US),
    )
    item_errors: list[ItemError] = []
    flat = _flatten(raw, rejected, item_errors)
    result = BatchResult()
    if flat:
        users, _ = ids_resolve(model=User, external_ids=flat.users(raw), create=True)
        items, _ = ids_resolve(model=Item, external_ids=flat.items, create=auto_create_items)
        impressions = _resolved(flat, raw, refs, (users, items), item_errors)
        impression_partitions_ensure(months=months_of(impressions.shown_at))
        result.created = atomic_with_retry(partial(_store, impressions))
        attribution_after_commit(partial(late_attributions_write, impressions))
        result.unchanged = len(impressions) - result.created
    _report(result, rejected, item_errors)
    return result


def _store(impressions: ImpressionArrays) -> int:
    """Insert the impressions, then credit them with stored clicks they led to that arrived first."""
    created = impressions_write(impressions)
    late_attributions_write(impressions)
    return created


def _issued_micros(ref: RecommendationRef | None) -> int:
    return NO_TIMESTAMP if ref is None else (ref.issued_at - EPOCH) // timedelta(microseconds=1)


class _Flat:
    """The accepted rows' items, one entry per shown item with a valid id: its row, id and 1-based position."""

    def __init__(self, rows: Ints, items: list[str], positions: Ints) -> None:
        self.rows, self.items, self.positions = rows, items, positions

    def __len__(self) -> int:
        return len(self.rows)

    def users(self, raw: RawImpressions) -> set[str]:
        return {cast(str, raw.users[k]) for k in np.unique(self.rows).tolist()}


def _flatten(raw: RawImpressions, rejected: Rejections, item_errors: list[ItemError]) -> _Flat:
    """The shown items of the accepted rows; an item whose id is not an id is rejected alone (in ``item_errors``).
    When every item is a valid id (each distinct one checked once), numpy lays them out without a step per item."""
    kept = [k for k in range(len(raw.items)) if k not in rejected]
    lists = [raw.items[k] for k in kept]
    shown = list(chain.from_iterable(lists))
    if set(map(type, shown)) <= {str} and all(map(is_external_id, set(shown))):
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        return _Flat(
            np.repeat(np.array(kept, dtype=np.int64), lengths),
            cast(list[str], shown),
            np.arange(len(shown), dtype=np.int64) - starts + 1,
        )
    rows, items, positions = [], [], []
    for k in kept:
        for position, item in enumerate(raw.items[k], 1):
            if isinstance(item, str) and is_external_id(item):
                rows.append(k)
                items.append(item)
                positions.append(position)
            else:
                item_errors.append((k, item, invalid_item_error(item).domain_error()))
    return _Flat(np.array(rows, dtype=np.int64), items, np.array(positions, dtype=np.int64))


def _resolved(
    flat: _Flat,
    raw: RawImpressions,
    refs: list[RecommendationRef | None],
    ids: tuple[dict[str, int], dict[str, int]],
    item_errors: list[ItemError],
) -> ImpressionArrays:
    """Database ids of the shown items; an unknown item (not to be created) is rejected alone."""
    users, items = ids
    row_users = [users.get(cast(str, user), 0) for user in raw.users]  # 0: rejected row, or a deleted user
    keep = np.ones(len(flat), dtype=bool)
    if not items.keys() >= set(flat.items) or not users.keys() >= flat.users(raw):
        for n, (k, item) in enumerate(zip(flat.rows.tolist(), flat.items, strict=True)):
            user = cast(str, raw.users[k])
            if item not in items or user not in users:  # a user only when deleted meanwhile
                what, value = ("item", item) if item not in items else ("user", user)
                item_errors.append((k, item, unknown_row_error(what, value).domain_error()))
                keep[n] = False
    rows = flat.rows[keep]
    kept_items = flat.items if keep.all() else list(compress(flat.items, keep))
    per_row = np.array(
        [
            (rid, ref.experiment_id if ref else None, ref.variant if ref else None)
            for rid, ref in zip(raw.recommendation_ids, refs, strict=True)
        ],
        dtype=object,
    ).reshape(len(refs), 3)[rows]
    return ImpressionArrays(
        user_ids=np.array(row_users, dtype=np.int64)[rows],
        item_ids=np.fromiter(map(items.__getitem__, kept_items), dtype=np.int64, count=len(kept_items)),
        positions=flat.positions[keep],
        shown_at=raw.timestamps[rows],
        recommendation_ids=per_row[:, 0].tolist(),
        experiment_ids=per_row[:, 1].tolist(),
        variants=per_row[:, 2].tolist(),
    )


def _report(result: BatchResult, rejected: Rejections, item_errors: list[ItemError]) -> None:
    """Row errors and item errors in the order of the batch (an item error names its item)."""
    entries: list[tuple[int, int, object, DomainError]] = [
        (k, 0, None, error.domain_error()) for k, error in rejected.items()
    ]
    entries += [(k, 1, item, error) for k, item, error in item_errors]
    for k, _, item, error in sorted(entries, key=lambda entry: (entry[0], entry[1])):
        if item is None:
            result.reject(k, error)
        else:
            result.reject(k, error, item=item)
