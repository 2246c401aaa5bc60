"""The write services the API calls: ingestion (from ``recsys.ingestion``) and deletes."""

from __future__ import annotations

from django.db import transaction

from recsys.errors import ItemNotFound, UserNotFound
from recsys.ingestion.documents import item_upsert, items_upsert, user_upsert
from recsys.ingestion.events import interactions_ingest
from recsys.ingestion.impressions import impressions_ingest
from recsys.ingestion.writer import references_delete_begin
from recsys.models import Item, User
from recsys.signals import item_deleted, user_deleted

__all__ = [
    "impressions_ingest",
    "interactions_ingest",
    "item_delete",
    "item_upsert",
    "items_upsert",
    "user_delete",
    "user_upsert",
]


def item_delete(*, external_id: str) -> None:
    with transaction.atomic():
        references_delete_begin()
        deleted, _ = Item.objects.filter(external_id=external_id).delete()
    if not deleted:
        raise ItemNotFound(f"item {external_id!r} does not exist")
    item_deleted.send(sender=Item, external_id=external_id)


def user_delete(*, external_id: str) -> None:
    """Delete a user with all their interactions (the right to be forgotten)."""
    with transaction.atomic():
        references_delete_begin()
        deleted, _ = User.objects.filter(external_id=external_id).delete()
    if not deleted:
        raise UserNotFound(f"user {external_id!r} does not exist")
    user_deleted.send(sender=User, external_id=external_id)
