"""Load a JSON Lines data set (as ``dataset_export`` writes it) through the ingestion paths of the API and files."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby, islice
from typing import Any

from django.conf import settings
from django.db import transaction

from embeddings.spaces import item_vector_put
from recsys.dataset_export import FORMAT, FORMAT_VERSION, KINDS
from recsys.errors import DomainError, ValidationFailed
from recsys.ingestion.documents import UserRow, items_upsert, users_load
from recsys.ingestion.events import interactions_load
from recsys.ingestion.readers import CHUNK_ROWS, json_rows_events_read, utf8
from recsys.ingestion.report import ImportReport
from recsys.ingestion.rules import EVENT_FIELDS, RawEvents, RowError
from recsys.ingestion.writer import ids_resolve
from recsys.models import EventType, Item
from recsys.numbers import finite_number
from recsys.rules.scenarios import hidden_items_add
from recsys.validation import ITEM_FIELDS, is_external_id

_EVENT_TYPE_NAME = re.compile(r"[-A-Za-z0-9_]{1,32}")  # EventType.name: a slug of 32

# Items per items_upsert call: the API's batch path, whose one JSON document of up to 100k
# characters of text per item is bounded to ~100 MB by 1,000 items.
ITEM_BATCH = 1_000
VECTOR_BATCH = 1_000  # vectors per transaction
_FIELDS = {
    "event_type": frozenset({"name", "weight", "uses_value", "description", "counts_as_click"}),
    "user": frozenset({"id", "attributes"}),
    "item": ITEM_FIELDS | {"id", "stub"},
    "vector": frozenset({"space", "item", "vector"}),
    "interaction": EVENT_FIELDS,
    "hidden_item": frozenset({"user", "item"}),
}
_PLURALS = {kind: kind.replace("_", " ") + "s" for kind in KINDS}


@dataclass(frozen=True)
class Record:
    line: int
    kind: str
    document: dict[str, Any]


@dataclass
class DatasetReport:
    """Per kind what the import did, and whether the file ended with its ``end`` line."""

    kinds: dict[str, ImportReport] = field(default_factory=lambda: {kind: ImportReport() for kind in KINDS})
    lines: ImportReport = field(default_factory=ImportReport)  # lines that are no record at all
    expected: dict[str, int] | None = None  # the end line's counts; None: the file was cut short

    def summary_lines(self) -> list[str]:
        lines = []
        for what, report in [*self.kinds.items(), ("unreadable lines", self.lines)]:
            if report.rows:
                lines += [report.summary(_PLURALS.get(what, what)), *report.rejection_lines()]
        if self.expected is None:
            lines.append("warning: no end line: the file is incomplete (what it held was imported)")
        elif mismatched := [k for k in KINDS if self.expected.get(k, 0) != self.kinds[k].rows]:
            lines.append(f"warning: the end line counts other rows for {', '.join(mismatched)}: {self.expected}")
        return lines


def dataset_import(*, lines: Iterable[str]) -> DatasetReport:
    """Store every record of a data set; bad records are rejected and reported, never fatal.

    Each kind goes through its ingestion path (users_load, items_upsert, item_vector_put,
    interactions_load), so the API's rules hold; re-importing the same file changes nothing.
    """
    report = DatasetReport()
    for kind, group in groupby(_records(lines, report.lines), key=lambda record: record.kind):
        if kind == "header":
            for record in group:
                _header_check(record.document)
        elif kind == "end":
            report.expected = next(group).document.get("counts") or {}
        else:
            started = time.perf_counter()
            part = _LOADERS[kind](group)
            part.seconds = time.perf_counter() - started
            _merge(report.kinds[kind], part)
    return report


def _records(lines: Iterable[str], unreadable: ImportReport) -> Iterator[Record]:
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        if not utf8(text):
            _reject(unreadable, number, RowError("not UTF-8", text.encode("utf-8", "surrogateescape")))
            continue
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, digits past int()'s limit, nesting past the stack
            _reject(unreadable, number, RowError("invalid JSON", text))
            continue
        kind = document.get("kind") if isinstance(document, dict) else None
        if kind not in (*KINDS, "header", "end"):
            _reject(unreadable, number, RowError("not an object with a known kind", text))
            continue
        del document["kind"]
        yield Record(number, kind, document)


def _reject(report: ImportReport, line: int, error: RowError) -> None:
    report.rows += 1
    report.reject(line, error)


def _header_check(header: dict[str, Any]) -> None:
    if header.get("format") != FORMAT or not isinstance(header.get("version"), int):
        raise ValidationFailed(f"not a {FORMAT} file: its header is {header}")
    if header["version"] > FORMAT_VERSION:
        raise ValidationFailed(f"{FORMAT} version {header['version']} is newer than this recsys reads")


def _unknown_fields(record: Record) -> RowError | None:
    unknown = set(record.document) - _FIELDS[record.kind]
    return RowError("unknown field(s)", ", ".join(sorted(unknown))) if unknown else None


def _checked(records: Iterable[Record], report: ImportReport) -> Iterator[Record]:
    """The records without unknown fields; the others are counted as rejected."""
    for record in records:
        if error := _unknown_fields(record):
            _reject(report, record.line, error)
        else:
            yield record


# ---- each kind -------------------------------------------------------------------------------


def _event_types(records: Iterable[Record]) -> ImportReport:
    """Event types the file names are created or given the file's weight: the interactions'
    stored weights follow from them."""
    report = ImportReport()
    for record in _checked(records, report):
        doc = record.document
        weight = doc.get("weight")
        if not isinstance(doc.get("name"), str) or not _EVENT_TYPE_NAME.fullmatch(doc["name"]):
            _reject(report, record.line, RowError("an event type's name is 1-32 of [A-Za-z0-9_-]", doc))
            continue
        if not finite_number(weight):
            _reject(report, record.line, RowError("an event type needs a finite weight", doc))
            continue
        description = str(doc.get("description") or "")[:200]
        defaults = {"weight": float(weight), "uses_value": bool(doc.get("uses_value")), "description": description}
        if "counts_as_click" in doc:  # files exported before it existed keep the stored flag
            defaults["counts_as_click"] = bool(doc["counts_as_click"])
        before = EventType.objects.filter(name=doc["name"]).values(*defaults).first()
        EventType.objects.update_or_create(name=doc["name"], defaults=defaults)
        report.rows += 1
        report.count(1, int(before is None), int(before is not None and before != defaults))
    return report


def _text(value: object) -> str:
    """A string as given; anything else as "" (a missing id is refused, not stored as "None")."""
    return value if isinstance(value, str) else ""


def _users(records: Iterable[Record]) -> ImportReport:
    report = ImportReport()
    rows = (
        UserRow(_text(r.document.get("id")), r.document.get("attributes") or {}, r.line)
        for r in _checked(records, report)
    )
    _merge(report, users_load(rows=rows))
    return report


def _items(records: Iterable[Record]) -> ImportReport:
    """Described items through items_upsert (the API's batch path); stubs as the importers create them."""
    report = ImportReport()
    iterator = _checked(records, report)
    while batch := list(islice(iterator, ITEM_BATCH)):
        stubs = [r for r in batch if r.document.get("stub") is True]
        described = [r for r in batch if r.document.get("stub") is not True]
        _stubs_store(stubs, report)
        result = items_upsert(rows=[{k: v for k, v in r.document.items() if k != "stub"} for r in described])
        report.rows += len(described)
        for error in result.errors:
            report.reject(described[error["index"]].line, RowError(error["error"]["message"], error.get("id") or ""))
        report.count(len(described) - len(result.errors), result.created, result.updated)
    return report


def _stubs_store(stubs: list[Record], report: ImportReport) -> None:
    valid = []
    for record in stubs:
        if is_external_id(record.document.get("id")):
            valid.append(record)
        else:
            _reject(report, record.line, RowError("invalid item id", record.document.get("id")))
    if valid:
        with transaction.atomic():
            _, created = ids_resolve(model=Item, external_ids={r.document["id"] for r in valid}, create=True)
        report.rows += len(valid)
        report.count(len(valid), created, 0)


def _vectors(records: Iterable[Record]) -> ImportReport:
    """One by one through the API's path (which creates each space with its first vector), a
    batch per transaction: a commit per vector made it 17 vectors/s."""
    report = ImportReport()
    iterator = _checked(records, report)
    while batch := list(islice(iterator, VECTOR_BATCH)):
        with transaction.atomic():
            for record in batch:
                _vector_put(record, report)
    return report


def _vector_put(record: Record, report: ImportReport) -> None:
    doc = record.document
    report.rows += 1
    try:  # item_vector_put's own atomic block is a savepoint here: a refused vector undoes only itself
        _, created = item_vector_put(
            item_external_id=str(doc.get("item")), space=str(doc.get("space")), vector=doc.get("vector")
        )
    except DomainError as error:
        report.reject(record.line, RowError(error.message, doc.get("item")))
        return
    report.count(1, int(created), int(not created))


def _interactions(records: Iterable[Record]) -> ImportReport:
    report = ImportReport()
    checked = _checked(records, report)
    chunks = (_raw_events(chunk) for chunk in iter(lambda: list(islice(checked, CHUNK_ROWS)), []))
    _merge(report, interactions_load(chunks=chunks, create_items=settings.RECSYS_AUTO_CREATE_ITEMS))
    return report


def _raw_events(chunk: list[Record]) -> RawEvents:
    """Columns for the file importer, read by the same reader as the API's event objects."""
    return json_rows_events_read([r.line for r in chunk], [r.document for r in chunk])


def _hidden_items(records: Iterable[Record]) -> ImportReport:
    """What users asked never to be recommended again, per user through the API's path (unknown
    users and items are refused, as the API does)."""
    report = ImportReport()
    for user, group in groupby(_checked(records, report), key=lambda record: record.document.get("user")):
        batch = list(group)
        report.rows += len(batch)
        valid = [r for r in batch if is_external_id(r.document.get("item"))]
        for record in (r for r in batch if not is_external_id(r.document.get("item"))):
            report.reject(record.line, RowError("invalid item id", record.document.get("item")))
        if not valid:
            continue
        try:
            changed = hidden_items_add(user_external_id=str(user), items=[r.document["item"] for r in valid])
        except DomainError as error:  # an unknown user
            for record in valid:
                report.reject(record.line, RowError(error.message, user))
            continue
        unknown = set(changed["unknown_items"])
        for record in valid:
            if record.document["item"] in unknown:
                report.reject(record.line, RowError("item does not exist", record.document["item"]))
        report.count(len(valid) - sum(r.document["item"] in unknown for r in valid), changed["changed"], 0)
    return report


_LOADERS: dict[str, Callable[[Iterable[Record]], ImportReport]] = {
    "event_type": _event_types,
    "user": _users,
    "item": _items,
    "vector": _vectors,
    "interaction": _interactions,
    "hidden_item": _hidden_items,
}


def _merge(into: ImportReport, part: ImportReport) -> None:
    """Add ``part``'s counts to ``into`` (a kind may come in several runs of lines)."""
    for name in ("rows", "created", "updated", "unchanged", "rejected", "users_created", "items_created", "seconds"):
        setattr(into, name, getattr(into, name) + getattr(part, name))
    into.reasons.update(part.reasons)
    into.examples.extend(part.examples[: max(0, 20 - len(into.examples))])
