"""The one writer: stub users and items, and the upserts of events, items and users.

Each statement is written once and reads its rows from a source: arrays bound as parameters (API
batches: one round trip, nothing to set up) or a temporary table filled by COPY (files: rows by
the hundred thousand).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from django.conf import settings
from django.db import IntegrityError, connection
from psycopg.types.json import Jsonb

from recsys.ingestion.rules import US, EventArrays, EventRules, Ints, events_deduplicate
from recsys.models import Item, User

# ---- users and items by id ------------------------------------------------------------------------

# Client ids resolve to row ids with one SELECT; only the missing ones are inserted. Measured per
# batch of 1,000 at 66k users: joining on external_id inside the INSERT hashed the whole users
# table (21 ms), INSERT .. ON CONFLICT DO NOTHING of 1,000 existing rows cost 15 ms, this 6 ms.
# The ids travel as one comma-joined text (the id rule allows no comma): psycopg's dump of a list of
# 200,000 strings cost more than the query.
_IDS_SELECT = "SELECT external_id, id FROM {table} WHERE external_id = ANY(string_to_array(%s::text, ','))"
# A user or item an event names but nobody described yet: a user without attributes, a stub item
# without text (its first item upsert fills it and clears is_stub).
_STUBS_CREATE = {
    User: """
        INSERT INTO recsys_user (external_id, attributes, created_at, updated_at)
        SELECT u, '{}', now(), now() FROM unnest(string_to_array(%s::text, ',')) AS u ORDER BY u
        ON CONFLICT (external_id) DO NOTHING
        RETURNING external_id, id
    """,
    Item: """
        INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,
                                 created_at, updated_at)
        SELECT i, '', '', '{}', '{}', false, true, now(), now()
        FROM unnest(string_to_array(%s::text, ',')) AS i ORDER BY i
        ON CONFLICT (external_id) DO NOTHING
        RETURNING external_id, id
    """,
}


@contextmanager
def _cursor() -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor with server-side parameter binding (Django's cursors inline parameters into the
    SQL text): measured 61 -> 35 ms for an API batch of 1,000 events."""
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def ids_resolve(
    *, model: type[User] | type[Item], external_ids: Iterable[str], create: bool
) -> tuple[dict[str, int], int]:
    """The row id of each external id that exists, or of all after creating the missing ones (users
    without attributes, stub items); and how many were created."""
    table = model._meta.db_table
    wanted = set(external_ids)
    with _cursor() as cursor:
        cursor.execute(_IDS_SELECT.format(table=table), [_joined(wanted)])
        ids = dict(cursor.fetchall())
        missing = sorted(wanted - ids.keys())  # sorted: concurrent writers take locks in the same order
        if not (missing and create):
            return ids, 0
        cursor.execute(_STUBS_CREATE[model], [_joined(missing)])
        created = cursor.fetchall()
        ids.update(created)
        # Rows a concurrent writer committed meanwhile were skipped as conflicts: read them now.
        missing = sorted(set(missing) - ids.keys())
        if missing:
            cursor.execute(_IDS_SELECT.format(table=table), [_joined(missing)])
            ids.update(cursor.fetchall())
        return ids, len(created)


# ---- arrays as parameters --------------------------------------------------------------------------

# Arrays travel as PostgreSQL array literals ('{1, 2, 3}', cast in the statement): psycopg dumps a
# Python list element by element in Python (~1.4 ms per 1,000 integers, ~3.3 ms per 1,000 floats on
# this machine, ~12 ms of an impressions batch's 23); the list's own repr, built in C, is 4-5x cheaper.


def ints_literal(values: npt.NDArray[np.integer[Any]]) -> str:
    """An integer array's literal ('{1, 2}')."""
    return "{" + str(values.tolist())[1:-1] + "}"


def floats_literal(values: npt.NDArray[np.floating[Any]]) -> str:
    """A float array's literal; NaN stays NaN (a nullif in the statement makes it NULL where it means none)."""
    return "{" + str(values.tolist())[1:-1] + "}"


def texts_literal(values: Iterable[str | None]) -> str:
    """A text array's literal: each string quoted (backslash and double quote escaped), None as NULL."""
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


def ints_or_nulls_literal(values: Iterable[int | None]) -> str:
    """An integer array's literal with None as NULL."""
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _joined(external_ids: Iterable[str]) -> str:
    external_ids = list(external_ids)
    joined = ",".join(external_ids)
    if joined.count(",") != max(len(external_ids) - 1, 0):
        raise ValueError("an external id with a comma reached the writer: the id rule refuses those")
    return joined


# ---- events ---------------------------------------------------------------------------------------

# Re-sending an event is a no-op; re-sending it with another value updates the value and weight.
# A row this statement inserted carries its statement_timestamp() as created_at (an updated one keeps its
# earlier arrival): on a partitioned table RETURNING cannot read the system column xmax.
# A NOT EXISTS pre-filter against stored rows made re-runs 2x faster but fresh imports slower, and
# the planner answered it with a hash join over the whole table once that grew past the chunk.
# ``gone`` counts the batch's distinct users and items that no longer exist (see ``references_hold``):
# it replaces the foreign keys' check of every row at commit (~10 ms of PostgreSQL CPU per 1,000 events).
_GONE = """
    SELECT (SELECT count(*) FROM unnest({user_set}) AS u(id)
            WHERE NOT EXISTS (SELECT 1 FROM recsys_user x WHERE x.id = u.id))
         + (SELECT count(*) FROM unnest({item_set}) AS i(id)
            WHERE NOT EXISTS (SELECT 1 FROM recsys_item x WHERE x.id = i.id)) AS n
"""
_EVENTS_UPSERT = (
    """
    WITH gone AS ("""
    + _GONE
    + """),
    written AS (
        INSERT INTO recsys_interaction AS old (user_id, item_id, event_type, value, weight, timestamp, created_at)
        SELECT s.user_id, s.item_id, (%(names)s::text[])[s.code + 1], nullif(s.value, 'NaN'), s.weight, s.ts,
               statement_timestamp()
        FROM {source}
        ON CONFLICT (user_id, item_id, event_type, timestamp) DO UPDATE
            SET value = EXCLUDED.value, weight = EXCLUDED.weight
            WHERE (old.value, old.weight) IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.weight)
        RETURNING (old.created_at = statement_timestamp()) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), (SELECT n FROM gone) FROM written
"""
)
_SETS_FROM_ARRAYS = {"{user_set}": "%(user_set)s::int8[]", "{item_set}": "%(item_set)s::int8[]"}


def _sets_from(table: str) -> dict[str, str]:
    return {f"{{{kind}_set}}": f"ARRAY(SELECT DISTINCT {kind}_id FROM {table})" for kind in ("user", "item")}


def _statement(source: str, sets: dict[str, str]) -> str:
    return _with_sets(_EVENTS_UPSERT.replace("{source}", source), sets)


def _with_sets(statement: str, sets: dict[str, str]) -> str:
    for placeholder, expression in sets.items():
        statement = statement.replace(placeholder, expression)
    return statement


_EVENTS_FROM_ARRAYS = """(
    SELECT r.user_id, r.item_id, r.code, r.value, r.weight,
           timestamptz 'epoch' + r.micros * interval '1 microsecond' AS ts
    FROM unnest(%(user_ids)s::int8[], %(item_ids)s::int8[], %(codes)s::int2[], %(values)s::float8[],
                %(weights)s::float8[], %(micros)s::int8[]) AS r(user_id, item_id, code, value, weight, micros)
) AS s"""
_EVENTS_STAGE = "recsys_import_events"
_EVENTS_STAGE_COLUMNS = "(user_id bigint, item_id bigint, code smallint, value float8, weight float8, ts timestamptz)"
_GONE_FROM_ARRAYS = _with_sets(_GONE, _SETS_FROM_ARRAYS)
_NO_SETS = {"{user_set}": "'{}'::int8[]", "{item_set}": "'{}'::int8[]"}
_EVENTS_STATEMENT = {  # by whether the events come by COPY, and whether their users and items are checked
    (False, True): _statement(_EVENTS_FROM_ARRAYS, _SETS_FROM_ARRAYS),
    (True, True): _statement(f"{_EVENTS_STAGE} AS s", _sets_from(_EVENTS_STAGE)),
    (False, False): _statement(_EVENTS_FROM_ARRAYS, _NO_SETS),
    (True, False): _statement(f"{_EVENTS_STAGE} AS s", _NO_SETS),
}
# A month's load table whose month got rows meanwhile: its events (the last of repeated ones) by upsert.
_EVENTS_FROM_LOAD = """(
    SELECT DISTINCT ON (user_id, item_id, event_type, timestamp)
           user_id, item_id, array_position(%(names)s::text[], event_type::text) - 1 AS code, value, weight,
           timestamp AS ts
    FROM {table} ORDER BY user_id, item_id, event_type, timestamp, id DESC
) AS s"""


def events_write(events: EventArrays, rules: EventRules, *, copy: bool, check: bool = True) -> tuple[int, int, int]:
    """Upsert events (the last of repeated ones wins); returns (created, updated, distinct events).

    ``copy``: send them by binary COPY into a staging table (files); otherwise as arrays (API batches).
    Raises ``ReferencesGone`` (the caller's transaction must roll back) when a user or item was deleted
    since its id was resolved. ``check=False``: the caller knows they exist (see ``references_hold``).
    """
    events = events_deduplicate(events)
    weights = rules.weights_of(events.codes, events.values)
    with _cursor() as cursor:
        references_hold(cursor)
        if copy:
            _events_copy(cursor, events, weights)
            cursor.execute(_EVENTS_STATEMENT[(True, check)], {"names": list(rules.names)})
        else:
            cursor.execute(_EVENTS_STATEMENT[(False, check)], _events_arrays(events, weights, rules, check))
        created, updated = _written(cursor)
    return created, updated, len(events)


def events_merge(table: str, rules: EventRules, *, since: int | None = None) -> tuple[int, int]:
    """Upsert the events of a load table into the interactions (its orphans removed first, see
    ``load_orphans_remove``, which makes the writer's check needless); returns (created, updated)."""
    load_orphans_remove(table, since=since)
    with _cursor() as cursor:
        statement = _statement(_EVENTS_FROM_LOAD.replace("{table}", table), _NO_SETS)
        cursor.execute(statement, {"names": list(rules.names)})
        return _written(cursor)


def _written(cursor: psycopg.Cursor[Any], *, gone_only: bool = False) -> tuple[int, int]:
    """(created, updated) of the upsert; raises ``ReferencesGone`` if its check found users or items gone."""
    row = cursor.fetchone()  # aggregates: always one row
    created, updated, gone = (0, 0, row[0]) if gone_only else row  # type: ignore[index,misc]
    if gone:
        raise ReferencesGone(f"{gone} users or items of these events were deleted since they were resolved")
    return created, updated


# ---- references: users and items that events name ------------------------------------------------

# No foreign key checks the user_id and item_id of recsys_interaction and recsys_attribution (migration 0009
# explains the protocol): every transaction that writes them holds this shared lock from before it checks
# that its users and items exist until it commits; a DELETE of users or items takes it exclusively, then
# deletes their interactions and attributions (triggers). A check made under the lock stays true until
# the commit.


class ReferencesGone(IntegrityError):
    """A user or item that events name was deleted after its id was resolved: resolve the batch again."""


def references_hold(cursor: psycopg.Cursor[Any] | None = None) -> int:
    """Hold off deletes of users and items until this transaction ends (a statement of its own, so that
    the next statement's snapshot sees every delete that committed before the lock was granted).

    Returns how many deletes of users or items have begun so far: ids known to exist when it returned a
    value still exist while it returns the same one (each delete counts itself while it holds the lock).
    """
    if cursor is None:
        with _cursor() as own:
            return references_hold(own)
    cursor.execute("SELECT recsys_references_share()")
    return int(cursor.fetchone()[0])  # type: ignore[index]


def references_delete_begin() -> None:
    """Before deleting users or items in this transaction: wait for the events transactions in flight and hold
    off new ones (the DELETE's trigger takes the same lock; taking it first keeps the ORM's deletes of
    related rows, which come before the DELETE, from deadlocking with a writer).

    Once the lock is held, and every ingest batch waits behind it, the rest of the transaction waits at most
    ``RECSYS_DELETE_LOCK_TIMEOUT_SECONDS`` for any other lock (a year's roll-up holds its partitions for the
    whole copy) before it fails with PostgreSQL's lock_not_available, releasing the lock (0: no bound)."""
    lock_timeout = settings.RECSYS_DELETE_LOCK_TIMEOUT_SECONDS
    with _cursor() as cursor:
        cursor.execute("SELECT recsys_references_take()")
        if lock_timeout:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{round(lock_timeout * 1000)}ms"])


# Each distinct id probed once (a NOT EXISTS per row, OR-ed, probed both indexes for every one of a month's
# million rows: ~3 s of PostgreSQL CPU).
_LOAD_ORPHANS_DELETE = """
    DELETE FROM {table} t
    WHERE t.user_id = ANY(ARRAY(SELECT d.id FROM (SELECT DISTINCT user_id AS id FROM {table}) AS d
                                WHERE NOT EXISTS (SELECT 1 FROM recsys_user u WHERE u.id = d.id)))
       OR t.item_id = ANY(ARRAY(SELECT d.id FROM (SELECT DISTINCT item_id AS id FROM {table}) AS d
                                WHERE NOT EXISTS (SELECT 1 FROM recsys_item i WHERE i.id = d.id)))
"""


def load_orphans_remove(table: str, *, since: int | None = None) -> int:
    """Before a month's load table joins the interactions (attached or merged, in the same transaction):
    delete its events of users and items deleted since they were loaded, as the delete's cascade would
    have; returns how many. ``since``: ``references_hold``'s value when its first rows were loaded (their
    users and items existing then): if no delete ran since, nothing is looked at."""
    with _cursor() as cursor:
        if references_hold(cursor) == since:
            return 0
        cursor.execute(_LOAD_ORPHANS_DELETE.format(table=table))
        return max(cursor.rowcount, 0)


def _events_arrays(
    events: EventArrays, weights: npt.NDArray[np.float64], rules: EventRules, check: bool
) -> dict[str, Any]:
    return {
        "names": list(rules.names),
        **(_sets(events) if check else {}),
        "user_ids": ints_literal(events.user_ids),
        "item_ids": ints_literal(events.item_ids),
        "codes": ints_literal(events.codes),
        "values": floats_literal(events.values),
        "weights": floats_literal(weights),
        "micros": ints_literal(events.timestamps),
    }


def _sets(events: EventArrays) -> dict[str, str]:
    """The distinct users and items of ``events``, for the check that they exist."""
    return {"user_set": ints_literal(np.unique(events.user_ids)), "item_set": ints_literal(np.unique(events.item_ids))}


# Fixed-width rows of PostgreSQL's binary COPY format, built by numpy without a Python loop.
# A NaN value stands for NULL (values are checked finite), so every row has the same width.
_EVENT_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("user_len", ">i4"),
        ("user", ">i8"),
        ("item_len", ">i4"),
        ("item", ">i8"),
        ("code_len", ">i4"),
        ("code", ">i2"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("weight_len", ">i4"),
        ("weight", ">f8"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800 * US  # binary COPY counts timestamps from 2000-01-01


def _events_copy(cursor: psycopg.Cursor[Any], events: EventArrays, weights: npt.NDArray[np.float64]) -> None:
    rows = np.empty(len(events), dtype=_EVENT_ROW)
    rows["fields"] = 6
    for name, width in (("user", 8), ("item", 8), ("code", 2), ("value", 8), ("weight", 8), ("ts", 8)):
        rows[f"{name}_len"] = width
    rows["user"], rows["item"], rows["code"] = events.user_ids, events.item_ids, events.codes
    rows["value"], rows["weight"] = events.values, weights
    rows["ts"] = events.timestamps - _PG_EPOCH_US
    _stage_create(cursor, _EVENTS_STAGE, _EVENTS_STAGE_COLUMNS)
    with cursor.copy(f"COPY {_EVENTS_STAGE} FROM STDIN (FORMAT BINARY)") as stream:
        stream.write(_COPY_HEADER)
        stream.write(rows.tobytes())
        stream.write(_COPY_TRAILER)


# ---- events into a fresh month (a standalone table attached as a partition afterwards) ---------------

# Rows of binary COPY have a fixed width within a group of events of one type with or without a value
# (NULL has no bytes, the type's name is text): each group is one numpy structured array. The id and
# created_at come from the table's defaults; a chunk's events are unique, and a later chunk's rows get
# higher ids, so of an event repeated across chunks the later row wins (``partitions``' dedupe).
_LOAD_COLUMNS = "(user_id, item_id, weight, timestamp, value, event_type)"


def events_load(table: str, events: EventArrays, rules: EventRules) -> int:
    """Append events (repeats removed, the last wins) to a month's load table by binary COPY; returns how many.
    Their users and items are not checked here: the load's attach removes the events of those deleted since
    (``load_orphans_remove``), and a file's chunk checks its remembered ones first (``references_check``)."""
    events = events_deduplicate(events)
    weights = rules.weights_of(events.codes, events.values)
    with _cursor() as cursor:
        _events_copy_load(cursor, table, events, weights, rules)
    return len(events)


def references_check(events: EventArrays) -> None:
    """Raise ``ReferencesGone`` (the caller's transaction must roll back) when a user or item of ``events``
    no longer exists; the caller holds ``references_hold``, so the answer stays true until it commits."""
    with _cursor() as cursor:
        cursor.execute(_GONE_FROM_ARRAYS, _sets(events))
        _written(cursor, gone_only=True)


def _events_copy_load(
    cursor: psycopg.Cursor[Any], table: str, events: EventArrays, weights: npt.NDArray[np.float64], rules: EventRules
) -> None:
    with cursor.copy(f"COPY {table} {_LOAD_COLUMNS} FROM STDIN (FORMAT BINARY)") as stream:
        stream.write(_COPY_HEADER)
        for block in load_rows(events, weights, rules.names):
            stream.write(block)
        stream.write(_COPY_TRAILER)


def load_rows(events: EventArrays, weights: npt.NDArray[np.float64], names: Sequence[str]) -> Iterator[bytes]:
    """The rows of a binary COPY of ``_LOAD_COLUMNS``, a block per (type, has a value) group."""
    has_value = ~np.isnan(events.values)
    for code, name in enumerate(names):
        of_type = events.codes == code
        for valued in (False, True):
            rows = np.flatnonzero(of_type & (has_value if valued else ~has_value))
            if len(rows):
                yield _load_group(events, weights, rows, name.encode(), valued).tobytes()


def _load_group(
    events: EventArrays, weights: npt.NDArray[np.float64], rows: Ints, name: bytes, valued: bool
) -> npt.NDArray[np.void]:
    fields = [("fields", ">i2"), ("user_len", ">i4"), ("user", ">i8"), ("item_len", ">i4"), ("item", ">i8")]
    fields += [("weight_len", ">i4"), ("weight", ">f8"), ("ts_len", ">i4"), ("ts", ">i8"), ("value_len", ">i4")]
    fields += [("value", ">f8")] if valued else []
    fields += [("name_len", ">i4"), ("name", f"S{len(name)}")]
    out = np.empty(len(rows), dtype=np.dtype(fields))
    out["fields"] = 6
    out["user_len"], out["item_len"], out["weight_len"], out["ts_len"] = 8, 8, 8, 8
    out["user"], out["item"], out["weight"] = events.user_ids[rows], events.item_ids[rows], weights[rows]
    out["ts"] = events.timestamps[rows] - _PG_EPOCH_US
    out["value_len"] = 8 if valued else -1
    if valued:
        out["value"] = events.values[rows]
    out["name_len"], out["name"] = len(name), name
    return out


def _stage_create(cursor: psycopg.Cursor[Any], table: str, columns: str) -> None:
    """This session's temporary ``table``, created on first use and emptied."""
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} {columns}")
    cursor.execute(f"TRUNCATE {table}")


# ---- items and users as documents -------------------------------------------------------------------

# Documents are JSON objects {"id", and the fields to set}. A field absent from a document keeps
# its stored value; content_changed_at moves when the text an encoder reads (title, text,
# categories) really changed.
_ITEM_INSERT = """
    INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,
                             published_at, available_from, available_until, content_changed_at, created_at,
                             updated_at)
    SELECT d->>'id', coalesce(d->>'title', ''), coalesce(d->>'text', ''),
           coalesce(ARRAY(SELECT jsonb_array_elements_text(d->'categories')), '{}'),
           coalesce(d->'attributes', '{}'), coalesce((d->>'is_hidden')::boolean, false), false,
           (d->>'published_at')::timestamptz, (d->>'available_from')::timestamptz,
           (d->>'available_until')::timestamptz, clock_timestamp(), now(), now()
    FROM ({source}) AS input(d)
    ORDER BY d->>'id'
    ON CONFLICT (external_id) DO NOTHING
    RETURNING external_id
"""
_ITEM_UPDATE = """
    WITH input AS (SELECT d FROM ({source}) AS input(d)),
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
                    ELSE i.published_at END AS published_at,
               CASE WHEN d ? 'available_from' THEN (d->>'available_from')::timestamptz
                    ELSE i.available_from END AS available_from,
               CASE WHEN d ? 'available_until' THEN (d->>'available_until')::timestamptz
                    ELSE i.available_until END AS available_until
        FROM recsys_item i JOIN input ON i.external_id = d->>'id'
        WHERE i.id IN (SELECT id FROM locked)
    )
    UPDATE recsys_item i
    SET title = new.title, text = new.text, categories = new.categories, attributes = new.attributes,
        is_hidden = new.is_hidden, published_at = new.published_at, available_from = new.available_from,
        available_until = new.available_until, is_stub = false, updated_at = now(),
        content_changed_at = CASE
            WHEN (i.title, i.text, i.categories) IS DISTINCT FROM (new.title, new.text, new.categories)
            THEN clock_timestamp() ELSE i.content_changed_at END
    FROM new
    WHERE i.id = new.id
      AND (i.is_stub OR (i.title, i.text, i.categories, i.attributes, i.is_hidden, i.published_at,
                         i.available_from, i.available_until)
           IS DISTINCT FROM (new.title, new.text, new.categories, new.attributes, new.is_hidden,
                             new.published_at, new.available_from, new.available_until))
    RETURNING i.external_id
"""
_USER_INSERT = """
    INSERT INTO recsys_user (external_id, attributes, created_at, updated_at)
    SELECT d->>'id', coalesce(d->'attributes', '{}'), now(), now()
    FROM ({source}) AS input(d)
    ORDER BY d->>'id'
    ON CONFLICT (external_id) DO NOTHING
    RETURNING external_id
"""
_USER_UPDATE = """
    WITH input AS (SELECT d FROM ({source}) AS input(d) WHERE d ? 'attributes'),
    locked AS (
        SELECT u.id FROM recsys_user u JOIN input ON u.external_id = input.d->>'id'
        ORDER BY u.external_id FOR NO KEY UPDATE OF u
    )
    UPDATE recsys_user u SET attributes = input.d->'attributes', updated_at = now()
    FROM input
    WHERE u.external_id = input.d->>'id' AND u.id IN (SELECT id FROM locked)
      AND u.attributes IS DISTINCT FROM input.d->'attributes'
    RETURNING u.external_id
"""
_DOCS_FROM_ARRAY = "SELECT jsonb_array_elements(%s::jsonb)"
_DOCS_STAGE = "recsys_import_documents"
_DOCS_FROM_STAGE = f"SELECT doc FROM {_DOCS_STAGE}"
_DOCUMENT_STATEMENTS = {
    (kind, copy): tuple(
        statement.replace("{source}", _DOCS_FROM_STAGE if copy else _DOCS_FROM_ARRAY) for statement in statements
    )
    for kind, statements in (("item", (_ITEM_INSERT, _ITEM_UPDATE)), ("user", (_USER_INSERT, _USER_UPDATE)))
    for copy in (False, True)
}


def documents_write(kind: str, documents: Sequence[dict[str, Any]], *, copy: bool) -> tuple[set[str], set[str]]:
    """Upsert ``kind`` ("item" or "user") documents, unique by id; returns the ids created and the ids changed.

    ``copy``: send them by COPY into a staging table (files); otherwise as one JSON array (API batches).
    """
    insert, update = _DOCUMENT_STATEMENTS[(kind, copy)]
    with _cursor() as cursor:
        if copy:
            _stage_create(cursor, _DOCS_STAGE, "(doc jsonb)")
            with cursor.copy(f"COPY {_DOCS_STAGE} FROM STDIN") as stream:
                for document in documents:
                    stream.write_row((Jsonb(document, dumps=_json_dumps),))
            params: list[str] = []
        else:
            params = [_json_dumps(list(documents))]
        cursor.execute(insert, params)
        created = {row[0] for row in cursor.fetchall()}
        cursor.execute(update, params)
        return created, {row[0] for row in cursor.fetchall()}


def _json_dumps(value: object) -> str:
    return json.dumps(value, default=_iso)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# The writer's cursor for the other modules that store batches the same way (recsys.feedback.store).
sql_cursor = _cursor
