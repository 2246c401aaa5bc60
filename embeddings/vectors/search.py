"""Nearest-neighbour queries over a vector table's items, with filters inside the query.

pgvector ≥ 0.8 keeps scanning the HNSW graph until ``limit`` rows pass the filters (iterative
index scans). On older versions the index returns at most ``hnsw.ef_search`` candidates before
filtering, so the search widens ef_search and, past its ceiling, falls back to an exact scan.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import transaction
from psycopg import sql

from embeddings.vectors.tables import cursor, pgvector_version, query_vector, raw_connection
from recsys.ingestion.writer import ints_literal
from recsys.replicas import read_alias
from recsys.rules.ruleset import NO_RULES, RuleSet, boost_columns, item_conditions

EF_SEARCH_MAX = 1000  # pgvector's ceiling for hnsw.ef_search
ITERATIVE_SCAN = ("hnsw.iterative_scan", "relaxed_order")  # pgvector >= 0.8: scan on until LIMIT rows pass
# A user's seen items are among their nearest candidates and are skipped after the index, so on
# pgvector < 0.8 their search starts at ef_search >= 4 × limit. Measured on ml-latest-small
# (bench/rules.py, the depth 30 of a boost at limit 10): at ef_search 64, 58% of users kept fewer
# than 30 candidates and searched again (1.7 statements a request); from 256, 1.1, and 609 of 610
# users' 30 candidates equal an exact search's (582 at 64). A limit of 10 still starts at 64.
SEEN_MARGIN = 4


@dataclass(frozen=True)
class Neighbour:
    item_id: int
    external_id: str
    score: float
    until: float | None = None  # the end of the item's availability window, epoch seconds
    boosts: tuple[bool, ...] = ()  # whether it matches each of the rules' boosts, in order


@dataclass(frozen=True)
class Filters:
    """Rows a query must skip or keep: hidden items and items outside their availability window
    are always skipped; ``rules`` add a filter expression and a user's hidden items."""

    exclude_ids: tuple[int, ...] = ()
    category: str | None = None
    rules: RuleSet = NO_RULES


@lru_cache(maxsize=1)
def iterative_scans_available() -> bool:
    return pgvector_version() >= (0, 8)


def nearest_items(
    table: str,
    query: npt.NDArray[np.float32],
    *,
    vector_type: str,
    limit: int,
    filters: Filters = Filters(),
    widen: bool = True,
    ef_search: int | None = None,
) -> list[Neighbour]:
    """Items of ``table`` by inner product with ``query`` (highest first) that pass ``filters``;
    ``vector_type`` is the table's column type (``ModelVersion.vector_type``; ``vector`` for spaces).
    ``widen=False``: one search, whatever it finds (on pgvector < 0.8, the filters may leave
    fewer than ``limit``; a candidate source accepts that rather than search again).
    ``ef_search``: the table's own (``ModelVersion.ef_search``, tuned when it was trained), or None
    for RECSYS_HNSW_EF_SEARCH."""
    found = _widened(
        lambda **settings: _search(table, query, vector_type, limit, filters, **settings),
        limit,
        widen=widen,
        ef_search=ef_search,
    )
    assert found is not None  # _search always answers a list
    return found


def _widened(
    search: Callable[..., list[Neighbour] | None],
    limit: int,
    *,
    widen: bool = True,
    margin: int = 1,
    ef_search: int | None = None,
) -> list[Neighbour] | None:
    """``search(session=..., local=...)`` until it finds ``limit`` rows, widening the HNSW search
    on pgvector < 0.8; a search that answers None has nothing to search for and is not repeated.
    ``margin``: the first search asks the index for at least ``margin`` × ``limit`` candidates.
    ``ef_search``: the table's own first ef_search, or None for the setting's."""
    if iterative_scans_available():
        # Session settings, set once per connection: no transaction and no extra round trips.
        return search(session=_first_search_session(limit, margin, ef_search))
    ef_search = ef_search_first(limit, margin, ef_search)
    while True:
        rows = search(session=(("hnsw.ef_search", str(ef_search)),))
        if not widen:
            return rows
        if rows is None or len(rows) >= limit or ef_search >= EF_SEARCH_MAX:
            break
        ef_search = min(ef_search * 4, EF_SEARCH_MAX)
    if rows is not None and len(rows) < limit:  # a very selective filter: an exact scan finds every match
        rows = search(local=(("enable_indexscan", "off"),))
    return rows


def one_search_settings(limit: int, ef_search: int | None = None) -> None:
    """The connection's settings for one search of ``limit`` rows that is not widened, as
    ``nearest_items(widen=False)`` makes it: for a search inside another module's statement."""
    _session_settings(_first_search_session(limit, ef_search=ef_search))


def _first_search_session(limit: int, margin: int = 1, ef_search: int | None = None) -> tuple[tuple[str, str], ...]:
    """The session settings of a search's first (on pgvector ≥ 0.8, only) HNSW pass."""
    if iterative_scans_available():
        return (ITERATIVE_SCAN, ("hnsw.ef_search", str(ef_search_iterative(limit, ef_search))))
    return (("hnsw.ef_search", str(ef_search_first(limit, margin, ef_search))),)


def ef_search_iterative(limit: int, ef_search: int | None = None) -> int:
    """The ef_search of an iterative scan (pgvector ≥ 0.8), which goes on past it until ``limit``
    rows pass the filters, so a narrower start costs no rows. A table's tuned value below the
    setting's is raised to ``limit`` (up to the setting's): its recall was measured for 10 rows, and
    a deeper search (the ranking stage's candidates) keeps at least the breadth it had before.
    A personalised search skips the user's seen items inside the scan: measured as served, its
    recall@10 is at least the bare index's at the same ef_search (0.9924 against 0.9885 at 20,
    0.9986 against 0.9974-0.9982 at 40; BENCHMARKS.md, Hot path, fourth pass)."""
    setting = ef_search_start()
    if ef_search is None:
        return setting
    return max(min(ef_search, EF_SEARCH_MAX), min(limit, setting))


def ef_search_first(limit: int, margin: int = 1, ef_search: int | None = None) -> int:
    """The first ef_search of a widening search on pgvector < 0.8: the index answers at most
    ef_search rows, so starting below ``limit`` would only search twice (the ranking stage's
    100-deep retrieval did, at ef_search 64); below ``margin`` × ``limit``, the first rung of the
    ×4 ladder from ef_search_start that reaches it. There the filters (seen items, categories,
    rules) apply after the index, so a table's own ``ef_search`` only ever widens this: a narrower
    start would return fewer rows or search again."""
    wanted = min(margin * limit, EF_SEARCH_MAX)
    first = max(ef_search_start(), min(limit, EF_SEARCH_MAX))
    while first < wanted:
        first = min(first * 4, EF_SEARCH_MAX)
    return max(first, min(ef_search, EF_SEARCH_MAX)) if ef_search is not None else first


def ef_search_start() -> int:
    """The HNSW search's first ef_search for a table without a tuned one (RECSYS_HNSW_EF_SEARCH;
    bench/ann_recall.py measures the recall each value buys and what it costs)."""
    return min(int(settings.RECSYS_HNSW_EF_SEARCH), EF_SEARCH_MAX)


_QUERY = """
    SELECT v.item_id, i.external_id, -(v.embedding <#> %(query)s) AS score, extract(epoch FROM i.available_until)
           {boosts}
    FROM {table} v JOIN recsys_item i ON i.id = v.item_id
    WHERE NOT i.is_hidden AND v.embedding IS NOT NULL {exclude} {category}
      {conditions}
    ORDER BY v.embedding <#> %(query)s
    LIMIT {limit}
"""


def _search(
    table: str,
    query: npt.NDArray[np.float32],
    vector_type: str,
    limit: int,
    filters: Filters,
    *,
    session: tuple[tuple[str, str], ...] = (),
    local: tuple[tuple[str, str], ...] = (),
) -> list[Neighbour]:
    """One search; ``session`` settings persist on the connection, ``local`` ones last one transaction."""
    category = sql.SQL("AND i.categories @> ARRAY[%(category)s]::varchar[]" if filters.category else "")
    conditions, condition_params = item_conditions(filters.rules)
    boosts, boost_params = boost_columns(filters.rules)
    statement = sql.SQL(_QUERY).format(
        table=sql.Identifier(table),
        exclude=exclusion_condition(bool(filters.exclude_ids)),
        category=category,
        conditions=sql.SQL(conditions),
        boosts=sql.SQL(boosts),
        limit=sql.Literal(limit),
    )
    params = {
        "query": query_vector(query, vector_type),  # halfvec for a halfvec table: its index's operator
        "exclude": ints_literal(np.asarray(filters.exclude_ids, np.int64)),  # built in C, not dumped id by id
        "category": filters.category,
        **condition_params,
        **boost_params,
    }
    rows = _rows(statement, params, session=session, local=local)
    # relaxed_order may return rows slightly out of order: the answer is always sorted.
    return sorted((_neighbour(r) for r in rows), key=lambda n: -n.score)


def exclusion_condition(exclude: bool) -> sql.SQL:
    """The excluded items' condition, only when there are some: an array parameter, even an empty
    one, makes PostgreSQL's generic plan look dearer than a custom one (its selectivity is a guess),
    so a prepared search was planned again on every request (~0.6 ms of the backend's CPU,
    bench/serve_profile.py: ``custom_plans`` in ``pg_prepared_statements``)."""
    return sql.SQL("AND v.item_id <> ALL(%(exclude)s::int8[])" if exclude else "")


def _neighbour(row: tuple[Any, ...]) -> Neighbour:
    return Neighbour(int(row[0]), row[1], float(row[2]), None if row[3] is None else float(row[3]), tuple(row[4:]))


def _rows(
    statement: sql.Composed | str,
    params: dict[str, Any],
    *,
    session: tuple[tuple[str, str], ...],
    local: tuple[tuple[str, str], ...],
) -> list[tuple[Any, ...]]:
    """The statement's rows. Searches become prepared statements (DATABASES' prepare_threshold)
    with a generic plan: LIMITs are literals, as a LIMIT parameter makes PostgreSQL re-plan every
    time (0.7 ms of an uncached recommendation's 2.9 ms in PostgreSQL, bench/serve_profile.py).
    Not under ``local`` planner settings: a cached plan would not see them."""
    _session_settings(session)
    with transaction.atomic(using=read_alias()) if local else nullcontext(), cursor() as cur:
        if local:
            cur.execute(_set_config(local, is_local=True))
        return cur.execute(statement, params, binary=True, prepare=False if local else None).fetchall()


# The hot path in one statement: the user, their stored vector, their seen items and the search.
# Four round trips became one (bench/serve_profile.py); the LATERAL search still uses the HNSW
# index (the user's vector reaches it as a parameter) and the seen items are one hashed set.
_USER_QUERY = """
    WITH u AS MATERIALIZED (
        SELECT u.id, s.embedding FROM recsys_user u LEFT JOIN {user_table} s ON s.user_id = u.id
        WHERE u.external_id = %(user)s
    )
    SELECT u.embedding IS NOT NULL, n.item_id, n.external_id, n.score, n.until {outer_boosts}
    FROM u LEFT JOIN LATERAL (
        SELECT v.item_id, i.external_id, -(v.embedding <#> u.embedding) AS score,
               extract(epoch FROM i.available_until) AS until {boosts}
        FROM {table} v JOIN recsys_item i ON i.id = v.item_id
        WHERE NOT i.is_hidden AND v.embedding IS NOT NULL {exclude} {category}
          {conditions}
          AND v.item_id NOT IN (SELECT item_id FROM recsys_hiddenitem WHERE user_id = (SELECT id FROM u))
          AND v.item_id NOT IN (
              SELECT item_id FROM recsys_interaction WHERE user_id = (SELECT id FROM u)
              GROUP BY item_id ORDER BY max(timestamp) DESC LIMIT {seen})
        ORDER BY v.embedding <#> u.embedding
        LIMIT {limit}
    ) n ON u.embedding IS NOT NULL
"""


def user_nearest_items(
    *,
    user_table: str,
    item_table: str,
    user_external_id: str,
    limit: int,
    filters: Filters,
    seen: int,
    ef_search: int | None = None,
) -> list[Neighbour] | None:
    """Items of ``item_table`` nearest the user's stored vector in ``user_table`` (highest first),
    skipping the user's ``seen`` most recent items, their hidden items and what ``filters`` exclude;
    None when the user is unknown or has no stored vector (the caller folds them in or falls back)."""
    # The user's own hidden items are read through u, in the same statement.
    conditions, condition_params = item_conditions(replace(filters.rules, hidden_for=None))
    boosts, boost_params = boost_columns(filters.rules)
    shape = (bool(filters.exclude_ids), bool(filters.category), conditions, boosts, len(filters.rules.boosts))
    statement = _user_statement(user_table, item_table, *shape, limit, seen)
    params = {
        "user": user_external_id,
        "exclude": ints_literal(np.asarray(filters.exclude_ids, np.int64)),  # built in C, not dumped id by id
        "category": filters.category,
        **condition_params,
        **boost_params,
    }

    def search(**settings: tuple[tuple[str, str], ...]) -> list[Neighbour] | None:
        rows = _rows(statement, params, session=settings.get("session", ()), local=settings.get("local", ()))
        if not rows or not rows[0][0]:
            return None
        found = (_neighbour(r[1:]) for r in rows if r[1] is not None)
        return sorted(found, key=lambda n: -n.score)

    return _widened(search, limit, margin=SEEN_MARGIN, ef_search=ef_search)


@lru_cache(maxsize=256)
def _user_statement(
    user_table: str,
    item_table: str,
    exclude: bool,
    category: bool,
    conditions: str,
    boosts: str,
    boost_count: int,
    limit: int,
    seen: int,
) -> str:
    """``_USER_QUERY``'s text for one shape of request, composed once: psycopg's composition of it
    was ~10% of the hot path's Python calls (bench/serve_profile.py)."""
    outer = "".join(f", n.boost_{k}" for k in range(boost_count))
    return (
        sql.SQL(_USER_QUERY)
        .format(
            user_table=sql.Identifier(user_table),
            table=sql.Identifier(item_table),
            exclude=exclusion_condition(exclude),
            category=sql.SQL("AND i.categories @> ARRAY[%(category)s]::varchar[]" if category else ""),
            conditions=sql.SQL(conditions),
            boosts=sql.SQL(boosts),
            outer_boosts=sql.SQL(outer),
            limit=sql.Literal(limit),
            seen=sql.Literal(seen),
        )
        .as_string(None)
    )


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


# The index alone, as ef_search tuning measures it: no join, the served session settings, and the
# items the served search would skip for that query (a user's seen items, a similar item's own).
_INDEX_QUERY = (
    "SELECT item_id FROM {table} WHERE embedding IS NOT NULL AND item_id <> ALL(%(skip)s::bigint[]) "
    "ORDER BY embedding <#> %(query)s LIMIT {limit}"
)


def index_search_ids(
    table: str,
    queries: npt.NDArray[np.float32],
    *,
    vector_type: str,
    limit: int,
    ef_search: int,
    skip: list[npt.NDArray[np.int64]] | None = None,
) -> list[npt.NDArray[np.int64]]:
    """Each query's ``limit`` item ids from ``table``'s HNSW index at ``ef_search`` (highest inner
    product first, as far as the index finds them), leaving out the query's ``skip`` ids as the
    served search does (inside the scan on pgvector ≥ 0.8, after it before): what
    ``embeddings.ann_tuning`` checks against the exact answer."""
    statement = sql.SQL(_INDEX_QUERY).format(table=sql.Identifier(table), limit=sql.Literal(limit))
    skipped = skip if skip is not None else [np.zeros(0, np.int64)] * len(queries)
    # The index itself, even where the planner would scan a small table (an exact answer: recall 1).
    breadth = (ITERATIVE_SCAN,) if iterative_scans_available() else ()
    session = (*breadth, ("hnsw.ef_search", str(ef_search)), ("enable_seqscan", "off"))
    try:
        return [
            np.array(
                [
                    r[0]
                    for r in _rows(
                        statement,
                        {"query": query_vector(q, vector_type), "skip": ints_literal(np.asarray(ids, np.int64))},
                        session=session,
                        local=(),
                    )
                ],
                np.int64,
            )
            for q, ids in zip(queries, skipped, strict=True)
        ]
    finally:
        _session_settings((("enable_seqscan", "on"),))
