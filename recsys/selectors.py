"""Reads of the core domain: items, users, a user's history."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q

from recsys.errors import ItemNotFound, UserNotFound, ValidationFailed
from recsys.models import Interaction, Item, User


def item_get(*, external_id: str) -> Item:
    try:
        return Item.objects.defer("search_vector").get(external_id=external_id)
    except Item.DoesNotExist:
        raise ItemNotFound(f"item {external_id!r} does not exist") from None


def user_get(*, external_id: str) -> User:
    try:
        return User.objects.get(external_id=external_id)
    except User.DoesNotExist:
        raise UserNotFound(f"user {external_id!r} does not exist") from None


@dataclass(frozen=True)
class HistoryPage:
    interactions: list[Interaction]
    next_cursor: str | None


def _encode_cursor(row: Interaction) -> str:
    return base64.urlsafe_b64encode(f"{row.timestamp.isoformat()}|{row.pk}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        moment, _, pk = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(moment), int(pk)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValidationFailed("cursor is not one this API returned", details={"cursor": ["invalid"]}) from None


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
