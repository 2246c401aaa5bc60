"""Interactions: the API's batches and the files' chunks through the same rules and the same writer."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import cast

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import connection
from django.utils import timezone

from recsys.db import atomic_with_retry, unless_locked
from recsys.feedback.attribution import attribution_after_commit, clicks_attribute
from recsys.ingestion.readers import batch_events_read, read_ahead
from recsys.ingestion.report import BatchResult, ImportReport
from recsys.ingestion.rules import (
    KNOWN_IDS_MAX,
    Codes,
    EventArrays,
    EventRules,
    Ints,
    Labels,
    RawEvents,
    Rejections,
    events_check,
    micros_now,
    unknown_row_error,
)
from recsys.ingestion.writer import (
    ReferencesGone,
    events_load,
    events_merge,
    events_write,
    ids_resolve,
    load_orphans_remove,
    references_check,
    references_hold,
)
from recsys.models import EventType, Item, User
from recsys.partitions import (
    Span,
    monthly_from,
    partition_create,
    partition_load_attach,
    partition_load_create,
    partition_load_drop,
    partition_load_index,
    partition_span,
    partitions_list,
    span_is_fresh,
)
from recsys.signals import interactions_imported, interactions_stored

Progress = Callable[[int], None]


def event_rules_load() -> EventRules:
    """The configured event types and the range of a rating's value (RECSYS_RATING_MIN/MAX)."""
    types = list(EventType.objects.order_by("name"))
    return EventRules(
        names=tuple(t.name for t in types),
        weights=np.array([t.weight for t in types], dtype=np.float64),
        uses_value=np.array([t.uses_value for t in types], dtype=bool),
        value_min=settings.RECSYS_RATING_MIN,
        value_max=settings.RECSYS_RATING_MAX,
        clicks=np.array([t.counts_as_click for t in types], dtype=bool),
    )


@dataclass
class _Checked:
    """A batch or chunk after the rules: each row's type code and the rows rejected."""

    raw: RawEvents
    codes: Codes
    rejected: Rejections


@dataclass
class _Resolved:
    """The accepted events by database id, the id of each of their users, and what was created."""

    events: EventArrays
    users: dict[str, int]  # the row ids of the users asked of the database (not known from earlier chunks)
    users_created: int
    items_created: int
    recommendation_ids: list[str | None] | None  # of the accepted rows, when any row named one
    items: dict[str, int] = field(default_factory=dict)  # as ``users``: the ids asked of the database


@dataclass
class _Known:
    """What a file's earlier chunks established about its ids, so that a chunk checks and asks the database
    only about ids it has not met (at most ``KNOWN_IDS_MAX`` of each kind are kept): the valid ones, and the
    row ids of users and items. A user or item deleted meanwhile makes a chunk's write fail its check of
    them (``ReferencesGone``): the chunk is then redone with the row ids forgotten."""

    valid: set[str] = field(default_factory=set)
    users: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    epoch: int | None = None  # ``references_hold``'s value when all of them were last known to exist

    def forget(self) -> None:
        self.users.clear()
        self.items.clear()
        self.epoch = None


def _check(raw: RawEvents, rules: EventRules, now_us: int, known: _Known | None = None) -> _Checked:
    """Pure but for ``known``'s memo, so that a file's next chunk is checked on the read-ahead thread."""
    days = settings.RECSYS_INTERACTION_RETENTION_DAYS
    oldest_us = now_us - days * 86_400_000_000 if days else None
    valid = None if known is None else known.valid
    return _Checked(raw, *events_check(raw, rules, now_us, valid_ids=valid, oldest_us=oldest_us))


def _resolve(checked: _Checked, *, create_items: bool, known: _Known | None = None) -> _Resolved:
    """Row ids for the accepted rows' users and items, creating the missing ones (items only when
    ``create_items``); rows whose item (or, deleted meanwhile, user) has none are rejected."""
    raw, rejected = checked.raw, checked.rejected
    item_ids, items, items_created = _row_ids(
        raw.items, rejected, "item", model=Item, create=create_items, known=None if known is None else known.items
    )
    user_ids, users, users_created = _row_ids(
        raw.users, rejected, "user", model=User, create=True, known=None if known is None else known.users
    )
    keep = _accepted(len(raw.lines), rejected)
    events = EventArrays(user_ids[keep], item_ids[keep], checked.codes[keep], raw.values[keep], raw.timestamps[keep])
    recommendation_ids = None
    if raw.recommendation_ids is not None:
        recommendation_ids = [r for k, r in enumerate(raw.recommendation_ids) if k not in rejected]
    return _Resolved(events, users, users_created, items_created, recommendation_ids, items)


def _row_ids(
    column: Labels,
    rejected: Rejections,
    what: str,
    *,
    model: type[User] | type[Item],
    create: bool,
    known: dict[str, int] | None = None,
) -> tuple[Ints, dict[str, int], int]:
    """Each row's database id (-1 on rejected rows), resolved once per distinct id of the accepted rows (those
    not ``known`` already); rows whose id has none are rejected (in place). Also the ids asked of the database
    by name, and how many were created."""
    named = column.present(_accepted(len(column), rejected))
    names = cast(list[str], [name for name, wanted in zip(column.names, named, strict=True) if wanted])
    known = {} if known is None else known
    asked = [name for name in names if name not in known] if known else names
    ids, created = ids_resolve(model=model, external_ids=asked, create=create) if asked else ({}, 0)
    per_name = np.array(
        [ids.get(name, known.get(name, -1)) if name is not None else -1 for name in column.names], dtype=np.int64
    )
    row_ids = column.of_names(per_name)
    for k in np.flatnonzero(row_ids < 0).tolist():
        if k not in rejected:
            rejected[k] = unknown_row_error(what, cast(str, column[k]))
    return row_ids, ids, created


def _accepted(size: int, rejected: Rejections) -> npt.NDArray[np.bool_]:
    keep = np.ones(size, dtype=bool)
    keep[list(rejected)] = False
    return keep


def _stored(
    resolved: _Resolved, rules: EventRules, *, copy: bool, loads: _MonthLoads | None = None, check: bool = True
) -> tuple[int, int, int]:
    """Write the events (a file's fresh spans by the span load), then attribute their click-type
    ones in the same transaction. Attribution reads the events' arrays, not the table, so events
    whose month is attached only at the end of a file are attributed with their chunk. ``check``: whether
    the writer checks that their users and items exist (``events_write``)."""
    if loads is not None:
        counts = _events_store(resolved.events, rules, loads, check=check)
    else:
        counts = events_write(resolved.events, rules, copy=copy, check=check)
    clicks_attribute(events=resolved.events, rules=rules, recommendation_ids=resolved.recommendation_ids)
    return counts


# ---- API batches ---------------------------------------------------------------------------------


def interactions_ingest(*, rows: Sequence[object], auto_create_items: bool | None = None) -> BatchResult:
    """Store a batch of events: unknown users are created, unknown items too (as stubs) when allowed.

    Valid rows are stored even when others are rejected; re-sending an event changes nothing.
    """
    if auto_create_items is None:
        auto_create_items = settings.RECSYS_AUTO_CREATE_ITEMS
    rules = event_rules_load()
    checked = _check(batch_events_read(rows), rules, micros_now())
    # New users and stub items commit on their own (idempotent, harmless if the events then fail), so
    # concurrent batches naming the same new user wait for one small INSERT rather than for each
    # other's whole transaction: 4 clients went from 13k to 20k+ events/s.
    resolved = _resolve(checked, create_items=auto_create_items)
    result = BatchResult()
    if len(resolved.events):
        try:
            created, updated, distinct = atomic_with_retry(partial(_stored, resolved, rules, copy=False))
        except ReferencesGone:  # a user or item deleted since it was resolved: created again, as a new one
            resolved = _resolve(checked, create_items=auto_create_items)
            created, updated, distinct = atomic_with_retry(partial(_stored, resolved, rules, copy=False))
        result.created, result.updated, result.unchanged = created, updated, distinct - created - updated
        attribution_after_commit(
            partial(
                clicks_attribute,
                events=resolved.events,
                rules=rules,
                recommendation_ids=resolved.recommendation_ids,
                after_commit=True,
            )
        )
        if created or updated:
            users = resolved.users
            interactions_stored.send(sender=User, user_ids=sorted(users.values()), external_ids=sorted(users))
    for index in sorted(checked.rejected):
        result.reject(index, checked.rejected[index].domain_error())
    return result


# ---- files ---------------------------------------------------------------------------------------


class _Copier:
    """COPYs a file's loading spans' events on a thread with a connection of its own, committing each chunk,
    while the main thread resolves the next chunk and the read-ahead thread reads the one after: PostgreSQL
    stores one chunk while the command prepares the next (measured in BENCHMARKS.md, Ingestion). At most one
    chunk waits, so memory stays bounded. A caller inside a transaction (a test's, a wrapping ``atomic``)
    cannot hand its rows to another connection: there a chunk is COPYed in its own connection at once."""

    def __init__(self, rules: EventRules) -> None:
        self.rules = rules
        self.alone = not connection.in_atomic_block  # whether other connections see what this one commits
        self._jobs: queue.Queue[tuple[str, EventArrays] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopping = False

    def send(self, table: str, events: EventArrays) -> None:
        if not self.alone:
            atomic_with_retry(partial(events_load, table, events, self.rules))
            return
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="import-copy", daemon=True)
            self._thread.start()
        self._jobs.put((table, events))

    def wait(self) -> None:
        """Return once every chunk sent is committed; raise the error of one that failed."""
        self._end()
        self._raise()

    def stop(self) -> None:
        """Drop the chunks not COPYed yet and end the thread (an import that failed)."""
        self._stopping = True
        self._end()

    def _end(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if self._error is None and not self._stopping:
                    try:
                        atomic_with_retry(partial(events_load, *job, self.rules))
                    except BaseException as error:  # raised in the main thread, at its next send or wait
                        self._error = error
        finally:
            connection.close()  # this thread's own


@dataclass
class _MonthLoads:
    """A file's partition spans (a month, or a year of older history: ``recsys.partitions.span_for``) that
    held nothing when it first named them: their events are COPYed into a standalone table per span (no
    index to maintain per row), indexed and attached as the span's partition at the end (measured in
    BENCHMARKS.md). Events of other spans take the idempotent upsert. A chunk's transaction checks its
    loading events' users and items and leaves them ``pending``; once it commits, ``send`` hands them to the
    ``_Copier``."""

    rules: EventRules
    tables: dict[Span, str] = field(default_factory=dict)
    upserted: set[Span] = field(default_factory=set)
    recent_from: date = field(default_factory=lambda: monthly_from(now=timezone.now()))  # one for the whole file
    since: int | None = None  # ``references_hold``'s value when the first chunk was stored (see ``loaded``)
    pending: list[tuple[str, EventArrays]] = field(default_factory=list)
    copier: _Copier = field(init=False)

    def __post_init__(self) -> None:
        self.copier = _Copier(self.rules)

    def loaded(self, epoch: int) -> None:
        """A chunk committed with its users and items existing at ``epoch`` (``references_hold``)."""
        if self.since is None:
            self.since = epoch

    def prepare(self, timestamps: Ints) -> None:
        """Decide the spans of a chunk's months not seen before; outside the chunk's transaction, so a
        retried chunk keeps its span tables."""
        for month in map(_as_date, np.unique(_months(timestamps))):
            if any(span.holds(month) for span in (*self.tables, *self.upserted)):
                continue
            span = partition_span(month=month, recent_from=self.recent_from)
            if span_is_fresh(span=span):
                self.tables[span] = partition_load_create(span=span)
                continue
            if not any(p.span.overlaps(span) for p in partitions_list()):
                # Its rows wait in DEFAULT (an API event of a month without a partition): give them their
                # partition first, or the whole file's events of the span pile up there too, for the beat
                # to move in one transaction. Behind a busy table, DEFAULT it is.
                unless_locked(partial(partition_create, span=span), f"creating {span.name}")
            self.upserted.add(span)

    def split(self, events: EventArrays, *, check: bool = True) -> EventArrays:
        """Keep the events of loading spans ``pending`` (a retried transaction starts again), their users and
        items checked in this transaction when ``check``; returns the others."""
        months = _months(events.timestamps)
        rest = np.ones(len(events), dtype=bool)
        self.pending = []
        for span, table in self.tables.items():
            mask = (months >= np.datetime64(span.lower, "M")) & (months < np.datetime64(span.upper, "M"))
            if mask.any():
                self.pending.append((table, _take(events, mask)))
                rest &= ~mask
        if check and self.pending:
            references_check(_take(events, ~rest))
        return events if rest.all() else _take(events, rest)

    def send(self) -> None:
        """After the chunk's commit: its loading events to the COPY."""
        for table, events in self.pending:
            self.copier.send(table, events)
        self.pending = []

    def finish(self) -> tuple[int, int]:
        """Attach every span's table (merge it by upsert where its span got rows meanwhile); (created, updated)."""
        created = updated = 0
        try:
            self.copier.wait()
            for span, table in sorted(self.tables.items()):
                if self.copier.alone:
                    partition_load_index(table=table)
                loaded = atomic_with_retry(partial(_load_attach, table, span, self.since, self.copier.alone))
                if loaded is not None:
                    created += loaded
                    continue
                merged = atomic_with_retry(partial(events_merge, table, self.rules, since=self.since))
                created, updated = created + merged[0], updated + merged[1]
        finally:
            self.abandon()
        return created, updated

    def abandon(self) -> None:
        self.copier.stop()
        for table in self.tables.values():
            partition_load_drop(table=table)  # a no-op for the attached ones (renamed)
        self.tables.clear()


def _load_attach(table: str, span: Span, since: int | None, indexed: bool) -> int | None:
    """Attach a span's load table, without the events of users and items deleted since they were loaded."""
    load_orphans_remove(table, since=since)
    return partition_load_attach(table=table, span=span, indexed=indexed)


def _months(timestamps: Ints) -> np.ndarray:
    return timestamps.astype("datetime64[us]").astype("datetime64[M]")


def _as_date(month: np.datetime64) -> date:
    return cast(date, month.astype("datetime64[D]").item())


def _take(events: EventArrays, mask: np.ndarray) -> EventArrays:
    return EventArrays(
        events.user_ids[mask], events.item_ids[mask], events.codes[mask], events.values[mask], events.timestamps[mask]
    )


def interactions_load(
    *, chunks: Iterable[RawEvents], create_items: bool = True, progress: Progress | None = None
) -> ImportReport:
    """Store events from a file chunk by chunk, with the API's rules, creating unknown users (and items
    unless told not to). Bad rows are rejected and reported, never fatal; re-loading changes nothing."""
    rules, report, started = event_rules_load(), ImportReport(), time.perf_counter()
    now_us, known = micros_now(), _Known()
    loads = _MonthLoads(rules)
    try:
        for checked in read_ahead(_check(raw, rules, now_us, known) for raw in chunks):
            _chunk_store(checked, rules, create_items, report, loads, known)
            if progress:
                progress(len(checked.raw.lines))
        _loads_finish(loads, report)
    finally:
        loads.abandon()
        if report.created or report.updated:  # what was committed, even if a later chunk failed
            interactions_imported.send(sender=User)
    report.seconds = time.perf_counter() - started
    return report


def _loads_finish(loads: _MonthLoads, report: ImportReport) -> None:
    """The loaded rows were counted unchanged per chunk; the attach knows how many were new."""
    created, updated = loads.finish()
    report.created += created
    report.updated += updated
    report.unchanged -= created + updated


def _chunk_store(
    checked: _Checked, rules: EventRules, create_items: bool, report: ImportReport, loads: _MonthLoads, known: _Known
) -> None:
    first_rejected = dict(checked.rejected)
    raw = checked.raw
    loads.prepare(np.delete(raw.timestamps, list(first_rejected)) if first_rejected else raw.timestamps)

    def work() -> tuple[_Resolved, tuple[int, int, int], int]:
        checked.rejected = dict(first_rejected)  # a retried transaction starts again
        # The references lock first: the ids resolved below exist until the commit, and the remembered ones
        # need no check if no delete ran since they were known to exist (see ``references_hold``).
        epoch = references_hold()
        resolved = _resolve(checked, create_items=create_items, known=known)
        return resolved, _stored(resolved, rules, copy=True, loads=loads, check=known.epoch != epoch), epoch

    try:
        resolved, (created, updated, _), epoch = atomic_with_retry(work)
    except ReferencesGone:  # a user or item was deleted meanwhile: resolve (or create) them again
        known.forget()
        resolved, (created, updated, _), epoch = atomic_with_retry(work)
    known.epoch = epoch  # committed: every id remembered existed then
    loads.loaded(epoch)
    loads.send()
    for mine, found in ((known.users, resolved.users), (known.items, resolved.items)):
        if len(mine) < KNOWN_IDS_MAX:
            mine.update(found)  # committed: safe for the next chunks
    rejected = checked.rejected
    report.rows += len(raw.lines)
    report.users_created += resolved.users_created
    report.items_created += resolved.items_created
    report.count(len(raw.lines) - len(rejected), created, updated)
    for k in sorted(rejected):
        report.reject(raw.lines[k], rejected[k])


def _events_store(
    events: EventArrays, rules: EventRules, loads: _MonthLoads, *, check: bool = True
) -> tuple[int, int, int]:
    """Loading spans' events by COPY (counted when attached), the others by upsert: (created, updated, distinct)."""
    rest = loads.split(events, check=check)
    return events_write(rest, rules, copy=True, check=check) if len(rest) else (0, 0, 0)


def interaction_arrays_load(
    *, batches: Iterable[EventArrays], rules: EventRules, progress: Progress | None = None
) -> ImportReport:
    """Store events that need no checking (generated ones) chunk by chunk, fresh spans by the load path."""
    report, started = ImportReport(), time.perf_counter()
    loads = _MonthLoads(rules)
    try:
        for events in read_ahead(batches):
            loads.prepare(events.timestamps)
            created, updated, _ = atomic_with_retry(partial(_events_store, events, rules, loads))
            loads.send()
            report.rows += len(events)
            report.count(len(events), created, updated)
            if progress:
                progress(len(events))
        _loads_finish(loads, report)
    finally:
        loads.abandon()
    report.seconds = time.perf_counter() - started
    return report
