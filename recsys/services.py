"""Ingestion services: set-based upserts of users, items and interactions, and deletes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection

from recsys.db import atomic_with_retry
from recsys.errors import DomainError, ItemNotFound, UserNotFound, ValidationFailed
from recsys.models import EventType, Item, User
from recsys.signals import interactions_stored, item_deleted, items_stored, user_deleted
from recsys.validation import CleanInteraction, clean_external_id, clean_interaction, clean_item_fields

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class BatchResult:
    """The partial-success answer of every batch endpoint."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, index: int, error: DomainError, **ids: Any) -> None:
        body = {"code": error.code, "message": error.message, "details": error.details}
        self.errors.append({"index": index, **ids, "error": body})

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged, "errors": self.errors}


# ---- items -------------------------------------------------------------------------------

_ITEM_INSERT = """
    INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,
                             published_at, content_changed_at, created_at, updated_at)
    SELECT d->>'id', coalesce(d->>'title', ''), coalesce(d->>'text', ''),
           coalesce(ARRAY(SELECT jsonb_array_elements_text(d->'categories')), '{}'),
           coalesce(d->'attributes', '{}'), coalesce((d->>'is_hidden')::boolean, false), false,
           (d->>'published_at')::timestamptz, clock_timestamp(), now(), now()
    FROM jsonb_array_elements(%s::jsonb) AS d
    ORDER BY d->>'id'
    ON CONFLICT (external_id) DO NOTHING
    RETURNING external_id
"""

# Only the fields present in a row change; content_changed_at moves when the text an encoder
# reads (title, text, categories) really changed.
_ITEM_UPDATE = """
    WITH input AS (SELECT d FROM jsonb_array_elements(%s::jsonb) AS d),
    locked AS (
        SELECT i.id FROM recsys_item i JOIN input ON i.external_id = input.d->>'id'
        ORDER BY i.external_id FOR NO KEY UPDATE OF i
    ),
    new AS (
        SELECT i.id,
               CASE WHEN d ? 'title' THEN d->>'title' ELSE i.title END AS title,
               CASE WHEN d ? 'text' THEN d->>'text' ELSE i.text END AS text,
               CASE WHEN d ? 'categories' THEN ARRAY(SELECT jsonb_array_elements_text(d->'categories'))
                    ELSE i.categories END AS categories,
               CASE WHEN d ? 'attributes' THEN d->'attributes' ELSE i.attributes END AS attributes,
               CASE WHEN d ? 'is_hidden' THEN (d->>'is_hidden')::boolean ELSE i.is_hidden END AS is_hidden,
               CASE WHEN d ? 'published_at' THEN (d->>'published_at')::timestamptz
                    ELSE i.published_at END AS published_at
        FROM recsys_item i JOIN input ON i.external_id = d->>'id'
        WHERE i.id IN (SELECT id FROM locked)
    )
    UPDATE recsys_item i
    SET title = new.title, text = new.text, categories = new.categories, attributes = new.attributes,
        is_hidden = new.is_hidden, published_at = new.published_at, is_stub = false, updated_at = now(),
        content_changed_at = CASE
            WHEN (i.title, i.text, i.categories) IS DISTINCT FROM (new.title, new.text, new.categories)
            THEN clock_timestamp() ELSE i.content_changed_at END
    FROM new
    WHERE i.id = new.id
      AND (i.is_stub OR (i.title, i.text, i.categories, i.attributes, i.is_hidden, i.published_at)
           IS DISTINCT FROM (new.title, new.text, new.categories, new.attributes, new.is_hidden,
                             new.published_at))
    RETURNING i.external_id
"""


def _item_json(external_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    doc = {"id": external_id, **fields}
    if isinstance(doc.get("published_at"), datetime):
        doc["published_at"] = doc["published_at"].isoformat()
    return doc


def items_upsert(*, rows: Iterable[object]) -> BatchResult:
    """Upsert many items; valid rows are stored even when others are rejected."""
    result = BatchResult()
    merged: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        raw_id = row.get("id") if isinstance(row, dict) else None
        try:
            external_id = clean_external_id(raw_id)
            fields = clean_item_fields({k: v for k, v in row.items() if k != "id"})  # type: ignore[attr-defined]
        except ValidationFailed as error:
            result.reject(index, error, id=raw_id if isinstance(raw_id, str) else None)
            continue
        merged.setdefault(external_id, {}).update(fields)  # a repeated id: later fields win
    if merged:
        created, changed = _items_store(merged)
        result.created = len(created)
        result.updated = len(changed - created)
        result.unchanged = len(merged) - result.created - result.updated
    return result


def _items_store(items: dict[str, dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Write validated fields by id; returns the ids created and the ids whose row changed."""
    docs = json.dumps([_item_json(k, v) for k, v in sorted(items.items())])

    def write() -> tuple[set[str], set[str]]:
        with connection.cursor() as cursor:
            cursor.execute(_ITEM_INSERT, [docs])
            created = {row[0] for row in cursor.fetchall()}
            cursor.execute(_ITEM_UPDATE, [docs])
            return created, {row[0] for row in cursor.fetchall()}

    created, changed = atomic_with_retry(write)
    if created or changed:
        items_stored.send(sender=Item, created=created, changed=changed - created)
    return created, changed


def item_upsert(*, external_id: str, data: object) -> tuple[Item, bool]:
    """Create or partially update one item; returns it and whether it was created."""
    external_id = clean_external_id(external_id)
    created, _ = _items_store({external_id: clean_item_fields(data)})
    return Item.objects.defer("search_vector").get(external_id=external_id), bool(created)


def item_delete(*, external_id: str) -> None:
    deleted, _ = Item.objects.filter(external_id=external_id).delete()
    if not deleted:
        raise ItemNotFound(f"item {external_id!r} does not exist")
    item_deleted.send(sender=Item, external_id=external_id)


# ---- users -------------------------------------------------------------------------------


def user_upsert(*, external_id: str, attributes: dict[str, Any] | None) -> tuple[User, bool]:
    clean_external_id(external_id)
    defaults = {} if attributes is None else {"attributes": attributes}
    user, created = User.objects.update_or_create(external_id=external_id, defaults=defaults)
    return user, created


def user_delete(*, external_id: str) -> None:
    """Delete a user with all their interactions (the right to be forgotten)."""
    deleted, _ = User.objects.filter(external_id=external_id).delete()
    if not deleted:
        raise UserNotFound(f"user {external_id!r} does not exist")
    user_deleted.send(sender=User, external_id=external_id)


# ---- interactions ------------------------------------------------------------------------


def event_weights() -> dict[str, tuple[float, bool]]:
    return {e.name: (e.weight, e.uses_value) for e in EventType.objects.all()}


# Client ids resolve to row ids with one SELECT; only the missing ones are inserted. Measured per
# batch of 1,000 at 66k users: joining on external_id inside the INSERT hashed the whole users
# table (21 ms), INSERT .. ON CONFLICT DO NOTHING of 1,000 existing rows cost 15 ms, this 6 ms.
_USERS_CREATE = """
    INSERT INTO recsys_user (external_id, attributes, created_at, updated_at)
    SELECT u, '{}', now(), now() FROM unnest(%s::text[]) AS u ORDER BY u
    ON CONFLICT (external_id) DO NOTHING
    RETURNING external_id, id
"""
_ITEMS_CREATE = """
    INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,
                             created_at, updated_at)
    SELECT i, '', '', '{}', '{}', false, true, now(), now() FROM unnest(%s::text[]) AS i ORDER BY i
    ON CONFLICT (external_id) DO NOTHING
    RETURNING external_id, id
"""
_IDS_SELECT = "SELECT external_id, id FROM {table} WHERE external_id = ANY(%s::varchar[])"

# Re-sending an event is a no-op; re-sending it with another value updates the value.
_INTERACTIONS_UPSERT = """
    INSERT INTO recsys_interaction (user_id, item_id, event_type, value, weight, timestamp, created_at)
    SELECT r.user_id, r.item_id, r.event_type, r.value, r.weight,
           timestamptz 'epoch' + r.micros * interval '1 microsecond', now()
    FROM unnest(%s::int8[], %s::int8[], %s::text[], %s::float8[], %s::float8[], %s::int8[])
         AS r(user_id, item_id, event_type, value, weight, micros)
    ON CONFLICT (user_id, item_id, event_type, timestamp) DO UPDATE
        SET value = EXCLUDED.value, weight = EXCLUDED.weight
        WHERE (recsys_interaction.value, recsys_interaction.weight)
              IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.weight)
    RETURNING (xmax = 0) AS inserted
"""


def interactions_ingest(*, rows: Iterable[object], auto_create_items: bool | None = None) -> BatchResult:
    """Store a batch of events: unknown users are created, unknown items too (as stubs) when allowed."""
    if auto_create_items is None:
        auto_create_items = settings.RECSYS_AUTO_CREATE_ITEMS
    result = BatchResult()
    weights = event_weights()
    now = datetime.now(UTC)
    events: dict[tuple[str, str, str, datetime], tuple[int, CleanInteraction]] = {}
    for index, row in enumerate(rows):
        try:
            event = clean_interaction(row, weights=weights, now=now)
        except ValidationFailed as error:
            result.reject(index, error)
            continue
        events[(event.user, event.item, event.type, event.timestamp)] = (index, event)  # last re-send wins
    if not auto_create_items and events:
        _reject_unknown_items(events, result)
    if events:
        inserted, users = _interactions_write(list(events.values()), auto_create_items)
        result.created = sum(inserted)
        result.updated = len(inserted) - result.created
        result.unchanged = len(events) - len(inserted)
        if result.created or result.updated:
            interactions_stored.send(sender=User, user_ids=sorted(users.values()), external_ids=sorted(users))
    result.errors.sort(key=lambda e: e["index"])
    return result


def _reject_unknown_items(
    events: dict[tuple[str, str, str, datetime], tuple[int, CleanInteraction]], result: BatchResult
) -> None:
    wanted = {key[1] for key in events}
    known = set(Item.objects.filter(external_id__in=wanted).values_list("external_id", flat=True))
    for key in [k for k in events if k[1] not in known]:
        index, event = events.pop(key)
        result.reject(index, ItemNotFound(f"item {event.item!r} does not exist", details={"item": ["unknown item"]}))


def _epoch_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _row_ids(
    cursor: psycopg.Cursor[Any], table: str, external_ids: list[str], create_sql: str | None
) -> dict[str, int]:
    """Row id per external id, creating missing rows with ``create_sql`` when given."""
    cursor.execute(_IDS_SELECT.format(table=table), [external_ids])
    ids = dict(cursor.fetchall())
    missing = [e for e in external_ids if e not in ids]
    if missing and create_sql:
        cursor.execute(create_sql, [missing])
        ids.update(cursor.fetchall())
        # Rows a concurrent batch committed meanwhile were skipped as conflicts: read them now.
        missing = [e for e in missing if e not in ids]
        if missing:
            cursor.execute(_IDS_SELECT.format(table=table), [missing])
            ids.update(cursor.fetchall())
    return ids


def _interactions_write(
    events: list[tuple[int, CleanInteraction]], auto_create_items: bool
) -> tuple[list[bool], dict[str, int]]:
    """Create missing users/items, then upsert the events.

    Returns per stored row whether it is new, and the row id per client id of the batch's users.
    """
    # Sorted by key so that concurrent overlapping batches take row locks in the same order.
    ordered = sorted((e for _, e in events), key=lambda e: (e.user, e.item, e.type, e.timestamp))
    connection.ensure_connection()
    # Server-side parameter binding (Django's cursors inline parameters into the SQL text) and
    # timestamps as integer microseconds: measured 61 -> 35 ms for a batch of 1,000 events.
    with psycopg.Cursor(connection.connection) as cursor:
        # New users and stub items commit on their own (idempotent, harmless if the events then
        # fail), so concurrent batches naming the same new user wait for one small INSERT rather
        # than for each other's whole transaction: 4 clients went from 13k to 20k+ events/s.
        users = _row_ids(cursor, "recsys_user", sorted({e.user for e in ordered}), _USERS_CREATE)
        items = _row_ids(
            cursor, "recsys_item", sorted({e.item for e in ordered}), _ITEMS_CREATE if auto_create_items else None
        )
        # A user or item deleted since validation has no id any more: its events cannot be stored.
        kept = [e for e in ordered if e.item in items and e.user in users]
        params = [
            [users[e.user] for e in kept],
            [items[e.item] for e in kept],
            [e.type for e in kept],
            [e.value for e in kept],
            [e.weight for e in kept],
            [_epoch_micros(e.timestamp) for e in kept],
        ]

        def upsert() -> list[bool]:
            cursor.execute(_INTERACTIONS_UPSERT, params)
            return [row[0] for row in cursor.fetchall()]

        return atomic_with_retry(upsert), {e.user: users[e.user] for e in kept}
