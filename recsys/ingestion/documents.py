"""Items and users: validated documents upserted by id, from API bodies or files, through one writer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from recsys.db import atomic_with_retry
from recsys.errors import NotFound, ValidationFailed
from recsys.ingestion.readers import batches
from recsys.ingestion.report import BatchResult, ImportReport
from recsys.ingestion.rules import RowError
from recsys.ingestion.writer import documents_write
from recsys.models import Item, User
from recsys.replicas import users_wrote
from recsys.signals import items_stored
from recsys.validation import (
    clean_attributes,
    clean_external_id,
    clean_item_fields,
    clean_user_fields,
    window_empty,
    window_error,
)

# Items carry up to 100k characters of text each; 10k per chunk bounds memory, and the per-chunk
# overhead is negligible next to the full-text and GIN index work per item.
DOCUMENT_CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class ItemRow:
    """An item as a file gives it: only title, text and categories; other fields keep what the API set."""

    external_id: str
    title: str = ""
    text: str = ""
    categories: Sequence[str] = ()
    line: int = 0

    def fields(self) -> dict[str, Any]:
        return {"title": self.title, "text": self.text, "categories": list(self.categories)}


@dataclass(frozen=True)
class UserRow:
    external_id: str
    attributes: dict[str, Any]
    line: int = 0

    def fields(self) -> dict[str, Any]:
        return {"attributes": self.attributes}


# ---- API ------------------------------------------------------------------------------------------


def items_upsert(*, rows: Iterable[object]) -> BatchResult:
    """Upsert many items; valid rows are stored even when others are rejected."""
    result = BatchResult()
    merged: dict[str, dict[str, Any]] = {}
    last_index: dict[str, int] = {}
    for index, row in enumerate(rows):
        raw_id = row.get("id") if isinstance(row, dict) else None
        try:
            external_id = clean_external_id(raw_id)
            fields = clean_item_fields({k: v for k, v in row.items() if k != "id"})  # type: ignore[attr-defined]
        except ValidationFailed as error:
            result.reject(index, error, id=raw_id if isinstance(raw_id, str) else None)
            continue
        merged.setdefault(external_id, {}).update(fields)  # a repeated id: later fields win
        last_index[external_id] = index
    for external_id in sorted(_empty_windows(merged)):
        result.reject(last_index[external_id], window_error(), id=external_id)
        del merged[external_id]
    if merged:
        created, changed = _items_store(merged, copy=False)
        result.created = len(created)
        result.updated = len(changed - created)
        result.unchanged = len(merged) - result.created - result.updated
    return result


def item_upsert(*, external_id: str, data: object) -> tuple[Item, bool]:
    """Create or partially update one item; returns it and whether it was created."""
    external_id = clean_external_id(external_id)
    fields = clean_item_fields(data)
    if _empty_windows({external_id: fields}):
        raise window_error()
    created, _ = _items_store({external_id: fields}, copy=False)
    item = Item.objects.defer("search_vector").filter(external_id=external_id).first()
    if item is None:  # a DELETE of the same id came in between
        raise NotFound(f"item {external_id!r} was deleted while it was written")
    return item, bool(created)


def user_upsert(*, external_id: str, attributes: dict[str, Any] | None) -> tuple[User, bool]:
    """Create a user or replace their attributes (``None``: leave them); returns it and whether it was created."""
    external_id = clean_external_id(external_id)
    fields = {} if attributes is None else clean_user_fields({"attributes": attributes})
    created, _ = atomic_with_retry(lambda: documents_write("user", [{"id": external_id, **fields}], copy=False))
    users_wrote(external_ids=[external_id])  # their next reads see this document (recsys.replicas)
    user = User.objects.filter(external_id=external_id).first()
    if user is None:  # a DELETE of the same id came in between
        raise NotFound(f"user {external_id!r} was deleted while it was written")
    return user, bool(created)


def _empty_windows(items: dict[str, dict[str, Any]]) -> set[str]:
    """The ids whose update sets an end of the availability window so that the window would be
    empty: with the other end as sent (two rows of a batch may set one end each) or, where this
    update leaves it, as stored."""
    touched = {
        external_id: fields
        for external_id, fields in items.items()
        if "available_from" in fields or "available_until" in fields
    }
    if not touched:
        return set()
    partial = [i for i, fields in touched.items() if not ("available_from" in fields and "available_until" in fields)]
    stored = {
        row[0]: row[1:]
        for row in Item.objects.filter(external_id__in=partial).values_list(
            "external_id", "available_from", "available_until"
        )
    }
    empty = set()
    for external_id, fields in touched.items():
        stored_from, stored_until = stored.get(external_id, (None, None))
        if window_empty(fields.get("available_from", stored_from), fields.get("available_until", stored_until)):
            empty.add(external_id)
    return empty


def _items_store(items: dict[str, dict[str, Any]], *, copy: bool) -> tuple[set[str], set[str]]:
    """Write validated fields by id; returns the ids created and the ids whose row changed."""
    documents = [{"id": external_id, **fields} for external_id, fields in sorted(items.items())]
    created, changed = atomic_with_retry(lambda: documents_write("item", documents, copy=copy))
    if created or changed:
        items_stored.send(sender=Item, created=created, changed=changed - created)
    return created, changed


# ---- files ----------------------------------------------------------------------------------------


def items_load(*, rows: Iterable[ItemRow]) -> ImportReport:
    """Upsert items' title, text and categories by id; invalid rows are rejected and reported."""
    return _documents_load("item", rows, clean_item_fields)


def users_load(*, rows: Iterable[UserRow]) -> ImportReport:
    """Upsert users' attributes by id; invalid rows are rejected and reported."""
    return _documents_load("user", rows, _user_fields)


def _user_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": clean_attributes(fields["attributes"])}


def _documents_load(
    kind: str, rows: Iterable[ItemRow | UserRow], clean: Callable[[dict[str, Any]], dict[str, Any]]
) -> ImportReport:
    report, started = ImportReport(), time.perf_counter()
    for batch in batches(rows, DOCUMENT_CHUNK_ROWS):
        documents: dict[str, dict[str, Any]] = {}
        rejected_before = report.rejected
        for row in batch:
            try:
                documents[clean_external_id(row.external_id)] = clean(row.fields())  # a repeated id: the last wins
            except ValidationFailed as error:
                report.reject(row.line, RowError(error.message, row.external_id))
        created, changed = _documents_store(kind, documents)
        if kind == "item" and (created or changed):  # as the API's upsert: answers, popular, encoding
            items_stored.send(sender=Item, created=created, changed=changed - created)
        report.rows += len(batch)
        report.count(len(batch) - (report.rejected - rejected_before), len(created), len(changed - created))
    report.seconds = time.perf_counter() - started
    return report


def _documents_store(kind: str, documents: dict[str, dict[str, Any]]) -> tuple[set[str], set[str]]:
    docs = [{"id": external_id, **fields} for external_id, fields in sorted(documents.items())]
    return atomic_with_retry(lambda: documents_write(kind, docs, copy=True))
