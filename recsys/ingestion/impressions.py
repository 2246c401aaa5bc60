"""Impressions: an API batch of display lists through the ingestion's rules and id resolution into
``recsys_impression`` (one row per shown item)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress

import numpy as np
from django.conf import settings

from recsys.db import atomic_with_retry
from recsys.errors import DomainError, PayloadTooLarge
from recsys.feedback.partitions import impression_partitions_ensure, months_of, retention_horizon
from recsys.feedback.store import ImpressionArrays, impressions_write
from recsys.ingestion.report import BatchResult
from recsys.ingestion.rules import (
    EPOCH,
    MAX_IMPRESSIONS_PER_BATCH,
    NO_TIMESTAMP,
    US,
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
        users, _ = ids_resolve(model=User, external_ids=flat.users, create=True)
        items, _ = ids_resolve(model=Item, external_ids=flat.items, create=auto_create_items)
        impressions = _resolved(flat, raw, refs, (users, items), item_errors)
        impression_partitions_ensure(months=months_of(impressions.shown_at))
        result.created = atomic_with_retry(partial(impressions_write, impressions))
        result.unchanged = len(impressions) - result.created
    _report(result, rejected, item_errors)
    return result


def _issued_micros(ref: RecommendationRef | None) -> int:
    return NO_TIMESTAMP if ref is None else (ref.issued_at - EPOCH) // timedelta(microseconds=1)


class _Flat:
    """The accepted rows' items, one entry per shown item with valid ids."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.users: list[str] = []
        self.items: list[str] = []
        self.positions: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)


def _flatten(raw: RawImpressions, rejected: Rejections, item_errors: list[ItemError]) -> _Flat:
    flat = _Flat()
    for k, (user, items) in enumerate(zip(raw.users, raw.items, strict=True)):
        if k in rejected:
            continue
        for position, item in enumerate(items, 1):
            if isinstance(item, str) and is_external_id(item):
                flat.rows.append(k)
                flat.users.append(user)  # type: ignore[arg-type]  # checked: rejected otherwise
                flat.items.append(item)
                flat.positions.append(position)
            else:
                item_errors.append((k, item, invalid_item_error(item).domain_error()))
    return flat


def _resolved(
    flat: _Flat,
    raw: RawImpressions,
    refs: list[RecommendationRef | None],
    ids: tuple[dict[str, int], dict[str, int]],
    item_errors: list[ItemError],
) -> ImpressionArrays:
    """Database ids of the shown items; an unknown item (not to be created) is rejected alone."""
    users, items = ids
    keep = np.ones(len(flat), dtype=bool)
    for n, (k, user, item) in enumerate(zip(flat.rows, flat.users, flat.items, strict=True)):
        if item not in items or user not in users:  # a user only when deleted meanwhile
            what, value = ("item", item) if item not in items else ("user", user)
            item_errors.append((k, item, unknown_row_error(what, value).domain_error()))
            keep[n] = False
    rows = np.array(flat.rows, dtype=np.int64)[keep]
    kept_refs = [refs[k] for k in rows]
    return ImpressionArrays(
        user_ids=np.array([users[u] for u in compress(flat.users, keep)], dtype=np.int64),
        item_ids=np.array([items[i] for i in compress(flat.items, keep)], dtype=np.int64),
        positions=np.array(flat.positions, dtype=np.int64)[keep],
        shown_at=raw.timestamps[rows],
        recommendation_ids=[raw.recommendation_ids[k] for k in rows],
        experiment_ids=[ref.experiment_id if ref else None for ref in kept_refs],
        variants=[ref.variant if ref else None for ref in kept_refs],
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
