"""Nearest-neighbour queries over a vector table's items, with filters inside the query.

pgvector ≥ 0.8 keeps scanning the HNSW graph until ``limit`` rows pass the filters (iterative
index scans). On older versions the index returns at most ``hnsw.ef_search`` candidates before
filtering, so the search widens ef_search and, past its ceiling, falls back to an exact scan.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from django.db import transaction
from pgvector import Vector
from psycopg import sql

from embeddings.vectors.tables import cursor, pgvector_version, raw_connection

EF_SEARCH_START = 100
EF_SEARCH_MAX = 1000  # pgvector's ceiling for hnsw.ef_search


@dataclass(frozen=True)
class Neighbour:
    item_id: int
    external_id: str
    score: float


@dataclass(frozen=True)
class Filters:
    """Rows a query must skip or keep: hidden items are always skipped."""

    exclude_ids: tuple[int, ...] = ()
    category: str | None = None


@lru_cache(maxsize=1)
def iterative_scans_available() -> bool:
    return pgvector_version() >= (0, 8)


def nearest_items(
    table: str, query: npt.NDArray[np.float32], *, limit: int, filters: Filters = Filters()
) -> list[Neighbour]:
    """Items of ``table`` by inner product with ``query`` (highest first) that pass ``filters``."""
    if iterative_scans_available():
        # Session settings, set once per connection: no transaction and no extra round trips.
        return _search(table, query, limit, filters, session=_ITERATIVE)
    ef_search = EF_SEARCH_START
    while True:
        rows = _search(table, query, limit, filters, session=(("hnsw.ef_search", str(ef_search)),))
        if len(rows) >= limit or ef_search >= EF_SEARCH_MAX:
            break
        ef_search = min(ef_search * 4, EF_SEARCH_MAX)
    if len(rows) < limit:  # a very selective filter: an exact scan finds every match
        rows = _search(table, query, limit, filters, local=(("enable_indexscan", "off"),))
    return rows


_ITERATIVE = (("hnsw.iterative_scan", "relaxed_order"), ("hnsw.ef_search", str(EF_SEARCH_START)))
_QUERY = """
    SELECT v.item_id, i.external_id, -(v.embedding <#> %(query)s) AS score
    FROM {table} v JOIN recsys_item i ON i.id = v.item_id
    WHERE NOT i.is_hidden AND v.embedding IS NOT NULL AND v.item_id <> ALL(%(exclude)s::int8[]) {category}
    ORDER BY v.embedding <#> %(query)s
    LIMIT %(limit)s
"""


def _search(
    table: str,
    query: npt.NDArray[np.float32],
    limit: int,
    filters: Filters,
    *,
    session: tuple[tuple[str, str], ...] = (),
    local: tuple[tuple[str, str], ...] = (),
) -> list[Neighbour]:
    """One search; ``session`` settings persist on the connection, ``local`` ones last one transaction."""
    category = sql.SQL("AND i.categories @> ARRAY[%(category)s]::varchar[]" if filters.category else "")
    statement = sql.SQL(_QUERY).format(table=sql.Identifier(table), category=category)
    params = {
        "query": Vector(query.astype(np.float32)),
        "exclude": list(filters.exclude_ids),
        "category": filters.category,
        "limit": limit,
    }
    _session_settings(session)
    with transaction.atomic() if local else nullcontext(), cursor() as cur:
        if local:
            cur.execute(_set_config(local, is_local=True))
        rows = cur.execute(statement, params, binary=True).fetchall()
    # relaxed_order may return rows slightly out of order: the answer is always sorted.
    return sorted((Neighbour(int(r[0]), r[1], float(r[2])) for r in rows), key=lambda n: -n.score)


def _set_config(settings: tuple[tuple[str, str], ...], *, is_local: bool) -> sql.Composed:
    calls = [
        sql.SQL("set_config({}, {}, {})").format(sql.Literal(k), sql.Literal(v), sql.Literal(is_local))
        for k, v in settings
    ]
    return sql.SQL("SELECT ") + sql.SQL(", ").join(calls)


def _session_settings(settings: tuple[tuple[str, str], ...]) -> None:
    """Apply session settings only when they differ from what this connection already has."""
    raw = raw_connection()
    current = getattr(raw, "_recsys_settings", {})
    wanted = {k: v for k, v in settings if current.get(k) != v}
    if wanted:
        with cursor() as cur:
            cur.execute(_set_config(tuple(wanted.items()), is_local=False))
        raw._recsys_settings = {**current, **wanted}
