"""Popular items: a per-item score table refreshed by a task, and on-demand rankings for other windows.

A score is the item's share, in percent, of the window's interaction weight, each user's weight on
an item capped (RECSYS_POPULAR_MAX_USER_WEIGHT) and time-decayed.

Counting interactions per request does not scale (10 million rows take seconds), so the default
window's scores live in ``ItemPopularity``, rewritten set-based by ``popularity_refresh`` on a
beat schedule. Other windows are computed on demand and cached for a minute.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, transaction

from recsys import redis_store
from recsys.deadline import deadline_lift, deadline_running
from recsys.replicas import read_connection, reading_from, replica_aliases
from recsys.rules.ruleset import AVAILABLE, NO_RULES, RuleSet, item_conditions

logger = logging.getLogger(__name__)
DEPTH = 1000  # ranked items kept per (window, category); exclusions are applied after
CACHE_SECONDS = 60
GENERATION = "popular:generation"  # a counter: cached rankings of an older one are stale
CHANGED_AT = "popular:changed-at"  # when it last moved (epoch seconds)
QUIET_WINDOW_ITEMS = DEPTH // 10  # fewer items active in the window than this: rank by all time

# Within the window each event counts exp(-age / window); the exponent is clamped because events
# decades old would underflow a double. The all-time fallback counts events undecayed.
_DECAY = "exp(greatest(-extract(epoch FROM now() - x.timestamp) / %(tau)s, -700))"
_WINDOW = "AND x.timestamp >= now() - %(window)s * interval '1 day'"
# Each user's (decayed, positive) weight on an item counts up to RECSYS_POPULAR_MAX_USER_WEIGHT, so
# one user's outliers (a rating of 1e9, a thousand views) weigh like one enthusiastic user. The
# score is the item's share of the window's total in percent: comparable across windows and
# refreshes, whatever the traffic (a raw decayed sum grows with the window and the volume).
_SCORED = """
    WITH per_user AS (
        SELECT x.item_id, least(sum(greatest(x.weight, 0) * {decay}), %(cap)s) AS weight
        FROM recsys_interaction x WHERE true {window}
        GROUP BY x.item_id, x.user_id
    ), scored AS (
        SELECT item_id, sum(weight) AS score FROM per_user GROUP BY item_id HAVING sum(weight) > 0
    ), total AS (SELECT sum(score) AS score FROM scored)
"""
_ON_DEMAND = (
    _SCORED
    + """
    SELECT i.id, i.external_id, 100 * s.score / total.score AS score,
           extract(epoch FROM i.available_from), extract(epoch FROM i.available_until)
    FROM scored s CROSS JOIN total JOIN recsys_item i ON i.id = s.item_id
    WHERE NOT i.is_hidden {category} {conditions}
    ORDER BY s.score DESC, i.external_id LIMIT %(depth)s
"""
)
_REFRESH = (
    _SCORED
    + """
    INSERT INTO embeddings_itempopularity (item_id, score, basis, refreshed_at)
    SELECT s.item_id, 100 * s.score / total.score, %(basis)s, now() FROM scored s CROSS JOIN total
"""
)
_STORED = """
    SELECT i.id, i.external_id, p.score, extract(epoch FROM i.available_from), extract(epoch FROM i.available_until)
    FROM embeddings_itempopularity p JOIN recsys_item i ON i.id = p.item_id
    WHERE NOT i.is_hidden {category} {conditions}
    ORDER BY p.score DESC, i.external_id LIMIT %(depth)s
"""
_CATEGORY = "AND i.categories @> ARRAY[%(category)s]::varchar[]"
_PASSING = "SELECT i.id FROM recsys_item i WHERE i.id = ANY(%(ids)s::int8[]) {conditions}"
# (item id, client id, score, available from, available until): the window's ends as epoch seconds,
# so a ranking cached for a minute still never offers an item outside its window.
Ranked = tuple[int, str, float, float | None, float | None]


def popularity_refresh() -> int:
    """Rewrite every item's score for the default window in one transaction; returns the rows."""
    window = settings.RECSYS_POPULAR_WINDOW_DAYS
    params = {"tau": window * 86_400.0, "window": window, "cap": settings.RECSYS_POPULAR_MAX_USER_WEIGHT}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM embeddings_itempopularity")
        cursor.execute(_REFRESH.format(decay=_DECAY, window=_WINDOW), {**params, "basis": "window"})
        if cursor.rowcount < QUIET_WINDOW_ITEMS:
            cursor.execute("DELETE FROM embeddings_itempopularity")
            cursor.execute(_REFRESH.format(decay="1", window=""), {**params, "basis": "all_time"})
        rows = cursor.rowcount
    _generation_next()  # the new scores are committed (or, inside a caller's transaction, its own to read)
    return rows


def popular_ranking(
    *, window_days: float, category: str | None, rules: RuleSet = NO_RULES, wanted: int = DEPTH
) -> list[Ranked]:
    """(item id, client id, score, available from, until) best first, hidden items and items
    outside their window left out, at most DEPTH of them. With a filter or a user's hidden items
    in ``rules``, the cached ranking is filtered in one query; when fewer than ``wanted`` of a full
    ranking pass, the ranking is computed again with the rules inside the query."""
    now = time.time()
    ranked = [r for r in _ranking_cached(window_days, category) if _available(r, now)]
    if not (rules.filters or rules.hidden_for):
        return ranked
    conditions, params = item_conditions(rules)
    with read_connection().cursor() as cursor:
        cursor.execute(_PASSING.format(conditions=conditions), {**params, "ids": [r[0] for r in ranked]})
        passing = {row[0] for row in cursor.fetchall()}
    kept = [r for r in ranked if r[0] in passing]
    if len(kept) < wanted and len(ranked) >= DEPTH - DEPTH // 10:
        # Not cached (the rules are the caller's), so within the request's own serving limit (a 503
        # past it, as any request): a selective filter on another window than the stored one counted
        # every interaction again on each request, with the 30 s a cached on-demand ranking gets.
        return _ranking(window_days, category, (conditions, params), bounded=True)
    return kept


def _available(row: Ranked, now: float) -> bool:
    return (row[3] is None or row[3] <= now) and (row[4] is None or row[4] > now)


def _ranking_cached(window_days: float, category: str | None) -> list[Ranked]:
    """The ranking as cached for up to CACHE_SECONDS, unless the catalogue changed since (one round
    trip: the generation and the ranking together)."""
    # v2: {"generation", "ranked"}; a process of the code before reads "popular:" keys as lists
    key = redis_store.key(f"popular:v2:{window_days}:{category or ''}")
    try:
        generation, changed_at, cached = redis_store.run(
            lambda client: client.mget(redis_store.key(GENERATION), redis_store.key(CHANGED_AT), key)
        )
    except redis_store.RedisUnavailable:
        generation, changed_at, cached = None, None, None
    current = int(generation or 0)
    if cached is not None:
        stored = json.loads(cached)
        if isinstance(stored, dict) and stored.get("generation") == current:
            return [tuple(row) for row in stored["ranked"]]  # type: ignore[misc]
    if _replaying(changed_at):
        # A replica may not have replayed the change yet: a ranking read there would hold the hidden
        # or deleted item and be cached under the new generation, for everyone.
        with reading_from(DEFAULT_DB_ALIAS):
            ranked = _ranking(window_days, category)
    else:
        ranked = _ranking(window_days, category)
    try:
        value = json.dumps({"generation": current, "ranked": ranked})
        redis_store.run(lambda client: client.set(key, value, ex=CACHE_SECONDS))
    except redis_store.RedisUnavailable:
        pass
    return ranked


def _ranking(
    window_days: float,
    category: str | None,
    rules: tuple[str, dict[str, Any]] = (f"AND {AVAILABLE}", {}),
    *,
    bounded: bool = False,
) -> list[Ranked]:
    params: dict[str, Any] = {
        "tau": window_days * 86_400.0,
        "window": window_days,
        "category": category,
        "depth": DEPTH,
        "cap": settings.RECSYS_POPULAR_MAX_USER_WEIGHT,
    }
    category_sql = _CATEGORY if category else ""
    conditions, condition_params = rules
    params.update(condition_params)
    with read_connection().cursor() as cursor:
        if window_days == settings.RECSYS_POPULAR_WINDOW_DAYS:
            cursor.execute(_STORED.format(category=category_sql, conditions=conditions), params)
            ranked = cursor.fetchall()
            if ranked or _refreshed():
                return [_row(row) for row in ranked]
            _refresh_soon()
    return _on_demand(params, category_sql, conditions, bounded=bounded)


def _row(row: tuple[Any, ...]) -> Ranked:
    pk, ext, score, start, until = row
    return int(pk), ext, float(score), None if start is None else float(start), None if until is None else float(until)


def _on_demand(params: dict[str, Any], category_sql: str, conditions: str, *, bounded: bool = False) -> list[Ranked]:
    """Another window than the stored one, or scores never refreshed: count the interactions now.
    That scans them (seconds at 10 million rows), so it may outlast the serving statement timeout;
    the answer is cached for a minute, so it runs with a timeout of its own, unless ``bounded`` (a
    ranking with the caller's rules, never cached: the serving limit holds)."""
    timeout = f"{settings.RECSYS_POPULAR_ON_DEMAND_TIMEOUT_MS}ms"
    if not bounded:
        deadline_lift()
    reader = read_connection()
    with transaction.atomic(using=reader.alias), reader.cursor() as cursor:
        if not (bounded and deadline_running()):  # bounded: the serving deadline's time left, if any
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
        for decay, window in ((_DECAY, _WINDOW), ("1", "")):
            statement = _ON_DEMAND.format(decay=decay, window=window, category=category_sql, conditions=conditions)
            cursor.execute(statement, params)
            ranked = cursor.fetchall()
            if len(ranked) >= QUIET_WINDOW_ITEMS:
                break
    return [_row(row) for row in ranked]


def _refresh_soon() -> None:
    """Scores were never computed (a new installation, or data imported before beat ran): ask a
    worker for them, at most once a minute."""
    from embeddings import tasks

    try:
        if redis_store.run(lambda client: client.set(redis_store.key("popular:refresh"), 1, nx=True, ex=60)):
            transaction.on_commit(tasks.popularity_refresh.delay)
    except Exception:  # Redis or the broker away: beat refreshes on its own schedule
        logger.warning("could not ask for a popularity refresh", exc_info=True)


def _refreshed() -> bool:
    with read_connection().cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM embeddings_itempopularity)")
        return bool(cursor.fetchone()[0])


def popular_rankings_forget() -> None:
    """Every cached ranking goes stale once the caller's transaction commits: an item was hidden,
    deleted or re-categorised (a ranking cached before would offer it for up to CACHE_SECONDS). A
    ranking computed from a catalogue read before the change is stored under the generation read
    before it, so it is never taken for a current one."""
    transaction.on_commit(_generation_next)


def _generation_next() -> None:
    def bump(client: Any) -> None:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(redis_store.key(GENERATION))
            expiry = math.ceil(max(CACHE_SECONDS, 2 * _replay_seconds()))  # Redis takes whole seconds
            pipe.set(redis_store.key(CHANGED_AT), time.time(), ex=expiry)
            pipe.execute()

    try:
        redis_store.run(bump)
    except redis_store.RedisUnavailable:
        pass  # rankings cached before expire within CACHE_SECONDS


def _replay_seconds() -> float:
    return float(settings.RECSYS_READ_YOUR_WRITES_SECONDS)


def _replaying(changed_at: bytes | str | None) -> bool:
    """Whether the catalogue changed so recently that a read replica may not have replayed it (the
    read-your-writes time: what a user who wrote is given too)."""
    if changed_at is None or not replica_aliases():
        return False
    return time.time() - float(changed_at) < _replay_seconds()
