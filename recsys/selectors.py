"""Reads of the core domain: items, users, a user's history."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Q

from recsys.errors import ItemNotFound, UserNotFound, ValidationFailed
from recsys.models import Interaction, Item, User
from recsys.replicas import replica_reads


def item_get(*, external_id: str) -> Item:
    try:
        return Item.objects.defer("search_vector").get(external_id=external_id)
    except Item.DoesNotExist:
        raise ItemNotFound(f"item {external_id!r} does not exist") from None


@replica_reads(user_argument="external_id")
def user_get(*, external_id: str) -> User:
    try:
        return User.objects.get(external_id=external_id)
    except User.DoesNotExist:
        raise UserNotFound(f"user {external_id!r} does not exist") from None


@dataclass(frozen=True)
class HistoryPage:
    interactions: list[Interaction]
    next_cursor: str | None


# A history cursor is "<microseconds since 1970>-<row id>" of the page's last row. Clients treat it
# as opaque, but its shape is regular, so the OpenAPI schema states exactly which cursors are well
# formed, and every string of that shape is a position this API can page from (no 400 for a
# schema-valid cursor). The digit bounds keep both numbers inside datetime's and bigint's range.
CURSOR_PATTERN = r"^(?:[0-9]{1,16}-[0-9]{1,18})?$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _encode_cursor(row: Interaction) -> str:
    return f"{(row.timestamp - _EPOCH) // _MICROSECOND}-{row.pk}"


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    if not _CURSOR_RE.fullmatch(cursor):
        raise ValidationFailed("cursor is not one this API returned", details={"cursor": ["invalid"]})
    micros, _, pk = cursor.partition("-")
    return _EPOCH + int(micros) * _MICROSECOND, int(pk)


@replica_reads(user_argument="external_id")
def user_interactions_page(*, external_id: str, limit: int, cursor: str | None = None) -> HistoryPage:
    """A user's events, newest first, keyset-paginated on (timestamp, id)."""
    user = user_get(external_id=external_id)
    rows = (
        Interaction.objects.filter(user=user)
        .select_related("item")
        .only("item__external_id", "event_type", "value", "weight", "timestamp")
    )
    if cursor:
        moment, pk = _decode_cursor(cursor)
        rows = rows.filter(Q(timestamp__lt=moment) | Q(timestamp=moment, pk__lt=pk))
    page = list(rows.order_by("-timestamp", "-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return HistoryPage(page, _encode_cursor(page[-1]) if more else None)
