"""Row reads and writes on vector tables: stored vectors, serving's one-round-trip reads, fold-in
and custom-vector writes, content rows to (re)encode, the admin's samples and status.

Each works on ``vector`` and ``halfvec`` tables alike: reads come back as pgvector's Vector or
HalfVector and leave as float32 (``as_array``), and writes send float32 ``vector`` values that
PostgreSQL casts to a halfvec column on assignment (pgvector's cast; float16's range is checked
when a version chooses halfvec, ``tables.vector_type_choose``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import transaction
from pgvector import Vector
from psycopg import sql

from embeddings.vectors.search import exclusion_condition, one_search_settings
from embeddings.vectors.tables import as_array, cursor, query_vector
from recsys.ingestion.writer import ints_literal
from recsys.rules.ruleset import NO_RULES, item_conditions

# ---- stored vectors -------------------------------------------------------------------------------


def vectors_of(
    table: str, owner_column: str, ids: Sequence[int], column: str = "embedding"
) -> dict[int, npt.NDArray[np.float32]]:
    """Stored vectors (``embedding`` or ``fold_in``) by owner id of one vector table."""
    owners, matrix = vectors_matrix(table, owner_column, ids, column=column)
    return dict(zip(owners.tolist(), matrix, strict=True))


def vectors_matrix(
    table: str, owner_column: str, ids: Sequence[int] | npt.NDArray[np.int64], column: str = "embedding"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Stored vectors of these owners as (sorted owner ids, one row each): rows are copied into
    one matrix as they are read, so many vectors cost no more than their floats."""
    if not len(ids):
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    statement = sql.SQL(
        "SELECT {col}, {vec} FROM {table} WHERE {col} = ANY(%s::int8[]) AND {vec} IS NOT NULL ORDER BY {col}"
    ).format(col=sql.Identifier(owner_column), vec=sql.Identifier(column), table=sql.Identifier(table))
    with cursor() as cur:
        cur.execute(statement, [np.asarray(ids, dtype=np.int64).tolist()], binary=True)
        owners = np.empty(cur.rowcount, dtype=np.int64)
        matrix: npt.NDArray[np.float32] | None = None
        for n, (owner, vector) in enumerate(cur):
            row = as_array(vector)
            if matrix is None:
                matrix = np.empty((len(owners), len(row)), dtype=np.float32)
            owners[n], matrix[n] = owner, row
    return owners, matrix if matrix is not None else np.empty((0, 0), dtype=np.float32)


# ---- serving reads (one round trip each) --------------------------------------------------------

_USER_STATE = """
    SELECT u.id, {vector}, h.items, h.weights, h.seen_at
    FROM recsys_user u
    LEFT JOIN LATERAL (
        SELECT array_agg(item_id ORDER BY last DESC) AS items, array_agg(weight ORDER BY last DESC) AS weights,
               array_agg(extract(epoch FROM last)::float8 ORDER BY last DESC) AS seen_at
        FROM (SELECT item_id, sum(weight)::float8 AS weight, max(timestamp) AS last
              FROM recsys_interaction WHERE user_id = u.id
              GROUP BY item_id ORDER BY last DESC LIMIT %(seen)s) recent
    ) h ON true
    WHERE u.external_id = %(user)s
"""


def user_state_row(
    *, user_external_id: str, user_table: str | None, seen: int
) -> tuple[int, npt.NDArray[np.float32] | None, list[int], list[float], list[float]] | None:
    """A user's id, stored vector in ``user_table`` (None without a table or a row), and their
    ``seen`` most recent items with summed weights and latest epoch seconds, most recent first."""
    with cursor() as cur:
        row = cur.execute(
            _user_state_statement(user_table), {"user": user_external_id, "seen": seen}, binary=True
        ).fetchone()
    if row is None:
        return None
    user_id, stored, items, weights, seen_at = row
    return int(user_id), as_array(stored) if stored is not None else None, items or [], weights or [], seen_at or []


@lru_cache(maxsize=64)
def _user_state_statement(user_table: str | None) -> str:
    """``_USER_STATE``'s text for one user table (or none), composed once per process (as the
    searches' are): psycopg's composition was ~0.06 ms of a request's CPU."""
    vector = (
        sql.SQL("(SELECT embedding FROM {} WHERE user_id = u.id)").format(sql.Identifier(user_table))
        if user_table
        else sql.SQL("NULL::vector")
    )
    return sql.SQL(_USER_STATE).format(vector=vector).as_string(None)


def item_vectors_row(
    *, item_external_id: str, columns: Sequence[tuple[str, str] | None]
) -> tuple[int, list[str], list[npt.NDArray[np.float32] | None]] | None:
    """An item's id, categories and its vectors in each (table, column) of ``columns`` (None
    entries and missing rows read as None), in one round trip."""

    def column(source: tuple[str, str] | None) -> sql.Composable:
        if source is None:
            return sql.SQL("NULL::vector")
        table, name = source
        return sql.SQL("(SELECT {} FROM {} WHERE item_id = i.id)").format(sql.Identifier(name), sql.Identifier(table))

    statement = sql.SQL("SELECT i.id, i.categories{} FROM recsys_item i WHERE i.external_id = %s").format(
        sql.SQL("").join(sql.SQL(", ") + column(source) for source in columns)
    )
    with cursor() as cur:
        row = cur.execute(statement, [item_external_id], binary=True).fetchone()
    if row is None:
        return None
    return int(row[0]), list(row[1] or []), [as_array(v) if v is not None else None for v in row[2:]]


# ---- writes ---------------------------------------------------------------------------------------


def user_vectors_upsert(*, user_table: str, vectors: dict[int, npt.NDArray[np.float32]]) -> list[str]:
    """Write these users' vectors (fold-ins) into a version's user table; returns the external ids
    of the users written (a user deleted meanwhile is skipped)."""
    if not vectors:
        return []
    statement = sql.SQL(
        "INSERT INTO {table} (user_id, embedding, updated_at) SELECT u, e::vector, now() "
        "FROM unnest(%s::int8[], %s::text[]) AS t(u, e) JOIN recsys_user ON recsys_user.id = t.u "
        "ON CONFLICT (user_id) DO UPDATE SET embedding = EXCLUDED.embedding, updated_at = now() "
        "RETURNING (SELECT external_id FROM recsys_user WHERE id = user_id)"
    ).format(table=sql.Identifier(user_table))
    ids = list(vectors)
    texts = [Vector(vectors[u]).to_text() for u in ids]
    with transaction.atomic(), cursor() as cur:
        cur.execute(statement, [ids, texts])
        return [row[0] for row in cur.fetchall()]


def user_vectors_delete(*, user_table: str, user_ids: list[int]) -> list[str]:
    """Remove these users' vectors from a version's user table (their history no longer folds in
    to one); returns the external ids of the users who had one."""
    if not user_ids:
        return []
    statement = sql.SQL(
        "DELETE FROM {table} v USING recsys_user u WHERE v.user_id = ANY(%s::int8[]) AND u.id = v.user_id "
        "RETURNING u.external_id"
    ).format(table=sql.Identifier(user_table))
    with cursor() as cur:
        cur.execute(statement, [user_ids])
        return [row[0] for row in cur.fetchall()]


def custom_vector_upsert(*, space_table: str, item_id: int, vector: npt.NDArray[np.float32]) -> bool:
    """Store an item's vector in a custom space's table; True when it had none before."""
    statement = sql.SQL(
        "INSERT INTO {table} (item_id, embedding) VALUES (%s, %s::vector) ON CONFLICT (item_id) DO UPDATE "
        "SET embedding = EXCLUDED.embedding, updated_at = now() RETURNING (xmax = 0)"
    ).format(table=sql.Identifier(space_table))
    with cursor() as cur:
        row = cur.execute(statement, [item_id, Vector(vector).to_text()]).fetchone()
    assert row is not None  # INSERT … RETURNING answers one row
    return bool(row[0])


# ---- the ranking stage's reads ---------------------------------------------------------------------

# What the ranker needs of each candidate, hidden items and other categories left out: its client id,
# categories, age in days, attributes, and its scores against the user's vectors in the
# collaborative and content versions. The scores are inner products computed by PostgreSQL (one
# index lookup per candidate and table, no vector leaves the server): shipping and decoding ~500
# vectors per request cost more than the lookups. The collaborative search runs in the same
# statement (``nearest``): its items join the candidates with the score the search computed, so
# they cost no lookup of their own and the request one round trip less. The search skips what the
# separate search skipped (hidden, excluded, other categories, unavailable) and nothing else: an
# item the rules' conditions reject still takes its place in the search's ranks, and only its
# facts row is dropped.
_CANDIDATES = """
    WITH nearest AS MATERIALIZED ({search})
    SELECT i.id, i.external_id, i.categories,
           extract(epoch FROM now() - coalesce(i.published_at, i.created_at))::float8 / 86400,
           {attributes},
           coalesce(n.score, (SELECT -(embedding <#> %(vector)s) FROM {table} WHERE item_id = i.id)),
           {content}, extract(epoch FROM i.available_until), n.score, coalesce(true {conditions}, false)
    FROM recsys_item i LEFT JOIN nearest n ON n.item_id = i.id
    WHERE i.id = ANY(%(ids)s::int8[] || ARRAY(SELECT item_id FROM nearest)) AND NOT i.is_hidden {category}
"""
_NEAREST = """
    SELECT v.item_id, -(v.embedding <#> %(vector)s) AS score
    FROM {table} v JOIN recsys_item i ON i.id = v.item_id
    WHERE NOT i.is_hidden AND v.embedding IS NOT NULL {exclude} {category} {available}
    ORDER BY v.embedding <#> %(vector)s
    LIMIT {limit}
"""
_NOTHING_NEAREST = "SELECT NULL::int8 AS item_id, NULL::float8 AS score WHERE false"

# Each category's newest visible items, newest first (ties: the lower id first, as offline).
_CATEGORY_NEWEST = """
    SELECT c, id, extract(epoch FROM at)::float8 FROM (
        SELECT c, i.id, coalesce(i.published_at, i.created_at) AS at,
               row_number() OVER (PARTITION BY c ORDER BY coalesce(i.published_at, i.created_at) DESC, i.id) AS r
        FROM recsys_item i, unnest(i.categories) c
        WHERE NOT i.is_hidden
    ) x
    WHERE r <= %s
    ORDER BY c, r
"""


def category_newest_rows(*, per_category: int) -> list[tuple[str, int, float]]:
    """(category, item id, publication or creation epoch seconds) of each category's
    ``per_category`` newest visible items, newest first within a category (read once per run)."""
    with cursor() as cur:
        rows = cur.execute(_CATEGORY_NEWEST, [per_category]).fetchall()
    return [(r[0], int(r[1]), float(r[2])) for r in rows]


@dataclass(frozen=True)
class Nearest:
    """The collaborative search that ``candidate_rows`` runs with the facts: the ``limit`` items
    of the item table nearest the user's vector, ``exclude`` (ascending ids) skipped, one search
    as ``nearest_items(widen=False)`` makes it."""

    limit: int
    exclude: npt.NDArray[np.int64]
    ef_search: int | None = None  # the version's own (ModelVersion.ef_search), None: the setting's


@dataclass(frozen=True)
class CandidateRows:
    """The search's (item ids, scores), in no particular order, and the candidates' facts rows."""

    nearest: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]
    rows: list[tuple[Any, ...]]


def candidate_rows(
    *,
    ids: Sequence[int] | npt.NDArray[np.int64],
    item_table: str,
    vector_type: str,
    vector: npt.NDArray[np.float32],
    content: tuple[str, npt.NDArray[np.float32]] | None,
    category: str | None,
    attributes: bool,
    conditions: tuple[str, dict[str, Any]] = ("", {}),
    nearest: Nearest | None = None,
) -> CandidateRows:
    """The ``nearest`` search's items, and (id, external id, categories, age days, attributes or
    None, ``vector`` · the item's vector in ``item_table``, the content profile · its vector in the
    content table, each None without a row, the end of its availability window in epoch seconds or
    None) of the visible candidates among ``ids`` and the
    search's items (in no particular order) that pass ``conditions``
    (``recsys.rules.ruleset.item_conditions``: availability, filter, hidden); one round trip.
    ``vector_type``: the item table's (``ModelVersion.vector_type``). ``content``: (content table,
    the user's profile) or None."""
    statement = _candidates_statement(
        item_table,
        content[0] if content else None,
        bool(category),
        attributes,
        conditions[0],
        nearest.limit if nearest else 0,
        bool(nearest and len(nearest.exclude)),
    )
    if nearest is not None:
        one_search_settings(nearest.limit, nearest.ef_search)
    params = {
        # A literal built in C: psycopg dumps a list's ~550 ids one by one (~1 ms of a ranked request).
        "ids": ints_literal(np.asarray(ids, np.int64)),
        "exclude": ints_literal(nearest.exclude) if nearest else None,
        "category": category,
        "vector": query_vector(vector, vector_type),  # the HNSW index's operator; scores alike
        "profile": Vector(np.asarray(content[1], np.float32)) if content else None,
        **conditions[1],
    }
    with cursor() as cur:
        rows = cur.execute(statement, params, binary=True).fetchall()
    searched = [r for r in rows if r[8] is not None]
    return CandidateRows(
        (np.array([r[0] for r in searched], np.int64), np.array([r[8] for r in searched], np.float32)),
        [r[:8] for r in rows if r[9]],
    )


@lru_cache(maxsize=256)
def _candidates_statement(
    item_table: str,
    content_table: str | None,
    category: bool,
    attributes: bool,
    conditions: str,
    limit: int,
    exclude: bool,
) -> str:
    """``_CANDIDATES``' text for one shape of request, composed once (as the user search's is)."""
    category_condition = sql.SQL("AND i.categories @> ARRAY[%(category)s]::varchar[]" if category else "")
    search = (
        sql.SQL(_NEAREST).format(
            table=sql.Identifier(item_table),
            exclude=exclusion_condition(exclude),
            category=category_condition,
            available=sql.SQL(item_conditions(NO_RULES)[0]),  # what nearest_items always applies
            limit=sql.Literal(limit),
        )
        if limit
        else sql.SQL(_NOTHING_NEAREST)
    )
    content = (
        sql.SQL("(SELECT -(embedding <#> %(profile)s) FROM {} WHERE item_id = i.id)").format(
            sql.Identifier(content_table)
        )
        if content_table
        else sql.SQL("NULL::float8")
    )
    return (
        sql.SQL(_CANDIDATES)
        .format(
            search=search,
            attributes=sql.SQL("i.attributes" if attributes else "NULL::jsonb"),
            table=sql.Identifier(item_table),
            content=content,
            category=category_condition,
            conditions=sql.SQL(conditions),  # type: ignore[arg-type]  # built from a whitelist, values are parameters
        )
        .as_string(None)
    )


# ---- mapped (cold) items: placed in a collaborative version from their content vectors -----------

# Items with a content vector and no collaborative row, or a mapped row older than their content
# vector (the text changed since it was mapped: a mapped row carries the updated_at of the content
# row it was mapped from); trained rows are never candidates.
_UNMAPPED = """
    SELECT c.item_id, c.embedding, c.updated_at FROM {content} c LEFT JOIN {table} v ON v.item_id = c.item_id
    WHERE c.embedding IS NOT NULL AND (v.item_id IS NULL OR (v.mapped AND v.updated_at < c.updated_at))
    ORDER BY c.updated_at, c.item_id
    LIMIT %s
"""


def items_unmapped(
    *, item_table: str, content_table: str, limit: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], list[datetime]]:
    """(ids, content vectors, the content rows' updated_at) of at most ``limit`` items to place in
    ``item_table`` by the map."""
    statement = sql.SQL(_UNMAPPED).format(table=sql.Identifier(item_table), content=sql.Identifier(content_table))
    with cursor() as cur:
        rows = cur.execute(statement, [limit], binary=True).fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32), []
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        np.stack([as_array(r[1]) for r in rows]),
        [r[2] for r in rows],
    )


def mapped_vectors_upsert(
    *,
    item_table: str,
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    mapped_from: list[datetime],
    fold_in: npt.NDArray[np.float32] | None = None,
) -> int:
    """Write mapped item rows (``mapped`` = true), each stamped with the ``updated_at`` of the content
    row it was mapped from (``mapped_from``): a text encoded again while it was mapped is newer, so it
    is mapped again (a stamp of the write's own time hid an encode that began before it). A trained
    row of the same item is never overwritten, and an item deleted meanwhile is skipped. Returns the
    rows written."""
    if not len(ids):
        return 0
    statement = sql.SQL(
        "INSERT INTO {table} AS t (item_id, embedding, fold_in, mapped, updated_at) "
        "SELECT x.i, x.e::vector, x.f::vector, true, x.u "
        "FROM unnest(%s::int8[], %s::text[], %s::text[], %s::timestamptz[]) AS x(i, e, f, u) "
        "JOIN recsys_item ON recsys_item.id = x.i "
        "ON CONFLICT (item_id) DO UPDATE SET embedding = EXCLUDED.embedding, fold_in = EXCLUDED.fold_in, "
        "updated_at = EXCLUDED.updated_at WHERE t.mapped"
    ).format(table=sql.Identifier(item_table))
    texts = [Vector(v).to_text() for v in vectors]
    extra = [Vector(v).to_text() for v in fold_in] if fold_in is not None else [None] * len(ids)
    with transaction.atomic(), cursor() as cur:
        cur.execute(statement, [np.asarray(ids).tolist(), texts, extra, list(mapped_from)])
        return int(cur.rowcount)


def mapped_items_count(*, item_table: str) -> int:
    with cursor() as cur:
        row = cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE mapped").format(sql.Identifier(item_table))).fetchone()
    return int(row[0]) if row else 0


# ---- freshness: what a version has not seen yet ---------------------------------------------------

# Users whose latest interaction is newer than their vector in the version, among those with
# interactions stored in the lookback window (the BRIN index on created_at keeps it cheap), the most
# recently active first: users whose history folds in to nothing (only dislikes, or only items the
# version does not know) have no vector and match on every sweep, and in an arbitrary order enough
# of them could fill the limit each time ahead of a user whose fold-in was lost.
_STALE_USERS = """
    SELECT x.user_id FROM recsys_interaction x LEFT JOIN {table} v ON v.user_id = x.user_id
    WHERE x.created_at > now() - %s * interval '1 second'
    GROUP BY x.user_id, v.updated_at
    HAVING v.updated_at IS NULL OR max(x.created_at) > v.updated_at
    ORDER BY max(x.created_at) DESC
    LIMIT %s
"""


def users_stale(*, user_table: str, lookback_seconds: float, limit: int) -> list[int]:
    with cursor() as cur:
        cur.execute(sql.SQL(_STALE_USERS).format(table=sql.Identifier(user_table)), [lookback_seconds, limit])
        return [int(row[0]) for row in cur.fetchall()]


# Items created or changed since the content version encoded them (or never encoded).
_UNENCODED = """
    FROM recsys_item i LEFT JOIN {table} v ON v.item_id = i.id
    WHERE v.item_id IS NULL OR v.source_changed_at < coalesce(i.content_changed_at, i.created_at)
"""


def items_unencoded(*, item_table: str, limit: int) -> list[tuple[int, str, str, list[str] | None, datetime]]:
    """(id, title, text, categories, changed at) of the oldest ``limit`` items to (re)encode."""
    statement = sql.SQL(
        "SELECT i.id, i.title, i.text, i.categories, coalesce(i.content_changed_at, i.created_at)"
        + _UNENCODED
        + "ORDER BY coalesce(i.content_changed_at, i.created_at), i.id LIMIT %s"
    ).format(table=sql.Identifier(item_table))
    with cursor() as cur:
        return cur.execute(statement, [limit]).fetchall()


def items_unencoded_count(*, item_table: str) -> int:
    with cursor() as cur:
        row = cur.execute(sql.SQL("SELECT count(*)" + _UNENCODED).format(table=sql.Identifier(item_table))).fetchone()
    return int(row[0]) if row else 0


# ---- the admin's reads ----------------------------------------------------------------------------


def vector_written(*, table: str, item_id: int, with_cluster: bool) -> tuple[datetime, int | None] | None:
    """When an item's vector in ``table`` was written, and its cluster (content tables); None
    when it has none (a content row may record "no text to encode": a NULL embedding)."""
    statement = sql.SQL(
        "SELECT updated_at, {cluster} FROM {table} WHERE item_id = %s AND embedding IS NOT NULL"
    ).format(cluster=sql.SQL("cluster" if with_cluster else "NULL::int"), table=sql.Identifier(table))
    with cursor() as cur:
        row = cur.execute(statement, [item_id]).fetchone()
    return (row[0], row[1]) if row else None


# A stable sample (the same items on every recompute, so two maps of one version compare):
# ordered by a hash of the id. BERNOULLI thins big tables first so the sort stays small.
_SAMPLE = """
    SELECT v.item_id, coalesce(nullif(i.title, ''), i.external_id), i.categories, {cluster}
    FROM {table} AS v {sampling}
    JOIN recsys_item i ON i.id = v.item_id
    WHERE v.embedding IS NOT NULL
    ORDER BY md5(v.item_id::text)
    LIMIT %s
"""


def items_sample(*, table: str, limit: int, with_cluster: bool) -> list[tuple[Any, ...]]:
    """About ``limit`` items with vectors in ``table``: (id, title or id, categories, cluster)."""
    estimate = row_estimate(table)
    # Thin to about twice what is kept (the hash order then picks among those).
    percent = min(100.0, 200.0 * limit / estimate) if estimate > 2 * limit else 100.0
    statement = sql.SQL(_SAMPLE).format(
        table=sql.Identifier(table),
        cluster=sql.SQL("v.cluster" if with_cluster else "NULL::int"),
        # REPEATABLE: the same rows each time the same table is sampled (a map computed again is the same map)
        sampling=sql.SQL("TABLESAMPLE BERNOULLI ({}) REPEATABLE (0)").format(sql.Literal(percent))
        if percent < 100
        else sql.SQL(""),
    )
    with cursor() as cur:
        return cur.execute(statement, [limit]).fetchall()


def row_estimate(table: str) -> float:
    """The planner's row count of ``table`` (pg_class.reltuples; 0 before it was first analysed)."""
    with cursor() as cur:
        row = cur.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [table]).fetchone()
    return float(row[0]) if row and row[0] and row[0] > 0 else 0.0
