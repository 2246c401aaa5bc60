"""Read replicas: which database serves a read, each replica's health, and read-your-writes.

Serving reads (``replica_reads`` on the selectors) run on a healthy replica, chosen per request by
``serving_alias``; everything else (writes, training, workers, the admin, a transaction already
open on the primary) reads the primary. The router (``recsys.db_router``) sends the ORM's reads to
the alias chosen here, and the vector tables' psycopg cursors ask ``read_alias`` for theirs.

Health is measured at most every ``RECSYS_REPLICA_CHECK_SECONDS`` per process (never per
request): a replica that does not answer is ``down``, one whose replay is more than
``RECSYS_REPLICA_MAX_LAG_SECONDS`` behind is ``lagging``; both are skipped. A statement that fails
on a replica is re-run on the primary within the same request (the client never sees it) and a
connection failure marks that replica down until its next check.

A user who just wrote (interactions, their user document, a fold-in of their vector) reads the
primary for ``RECSYS_READ_YOUR_WRITES_SECONDS``: a short Redis key per user, set after the commit,
plus a copy in the writing process. While Redis does not answer, serving prefers the primary.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

from recsys import redis_store

logger = logging.getLogger(__name__)
T = TypeVar("T")
PREFIX = "replica_"
OK, LAGGING, DOWN = "ok", "lagging", "down"
# A standby that is behind the primary's WAL position is measured again after this pause before it
# is called lagging: after a long idle spell the last replayed commit is old although the replica
# is only milliseconds behind (pg_last_xact_replay_timestamp measures the primary's idleness too).
RECHECK_PAUSE_SECONDS = 0.05
# SQLSTATEs of a failed connection (class 08) or of a server going away (57P01-57P03): the replica is
# marked down; any other error on a replica (a recovery conflict, a table it has not replayed yet)
# only sends this request to the primary.
CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


@dataclass(frozen=True)
class ReplicaHealth:
    alias: str
    state: str  # ok, lagging or down
    lag_seconds: float | None  # None when it did not answer
    checked_at: float  # time.monotonic()
    detail: str = ""


_current: ContextVar[str | None] = ContextVar("recsys_read_alias", default=None)
_health: dict[str, ReplicaHealth] = {}
_health_lock = threading.Lock()
_checking: set[str] = set()
_wrote_here: dict[str, float] = {}  # user external id -> time.monotonic() until which they read the primary


# ---- which database reads ---------------------------------------------------------------------------


def replica_aliases() -> list[str]:
    return [alias for alias in settings.DATABASES if alias.startswith(PREFIX)]


def read_alias() -> str:
    """The database that reads in this context: the serving scope's replica, else the primary."""
    return _current.get() or DEFAULT_DB_ALIAS


def read_connection() -> Any:
    """Django's connection to the database that reads in this context (for raw SQL reads)."""
    return connections[read_alias()]


def serving_alias(*, user: str | None = None) -> str:
    """Where a serving read for ``user`` (None: no user) goes now: a healthy replica (random among
    them), or the primary when there is none, the user wrote moments ago, or a transaction is open
    on the primary (its reads must see its writes)."""
    aliases = replica_aliases()
    if not aliases or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return DEFAULT_DB_ALIAS
    healthy = [alias for alias in aliases if replica_health(alias=alias).state == OK]
    if not healthy or (user is not None and user_recently_wrote(external_id=user)):
        return DEFAULT_DB_ALIAS
    return random.choice(healthy)


@contextmanager
def reading_from(alias: str) -> Iterator[None]:
    """Route this context's reads to ``alias`` (the ORM through the router, vector cursors too)."""
    token = _current.set(None if alias == DEFAULT_DB_ALIAS else alias)
    try:
        yield
    finally:
        _current.reset(token)


def serving_read(work: Callable[[], T], *, user: str | None = None) -> T:
    """``work()`` on the replica ``serving_alias`` picks; a database error there re-runs it on the
    primary (a connection failure also marks the replica down), so the caller never sees it."""
    if _current.get() is not None:  # nested: the outer scope chose already
        return work()
    alias = serving_alias(user=user)
    if alias == DEFAULT_DB_ALIAS:
        return work()
    try:
        with reading_from(alias), _deadline_on(alias):
            return work()
    except (DatabaseError, psycopg.Error) as error:
        if _statement_cancelled(error):
            raise  # the request's own time limit: the primary would not answer in time either
        _replica_failed(alias, error)
    return work()


def replica_reads(*, user_argument: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a serving selector: it runs through ``serving_read``, for the user named by its
    keyword argument ``user_argument``, else the user of its ``rules`` (``user=`` on similar,
    session, popular, search: their hidden items) (read-your-writes: hiding an item takes effect on
    the user's next request, whichever endpoint it is)."""

    def decorate(selector: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(selector)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            user = kwargs.get(user_argument) if user_argument else None
            if user is None:
                user = getattr(kwargs.get("rules"), "hidden_for", None)
            return serving_read(lambda: selector(*args, **kwargs), user=user)

        return wrapper

    return decorate


@contextmanager
def _deadline_on(alias: str) -> Iterator[None]:
    """The serving time limit (recsys.deadline) bounds the replica's statements as the primary's:
    armed now for the raw psycopg cursors, re-armed per ORM statement as the budget runs down."""
    from recsys.deadline import deadline_connection_arm, deadline_execute

    replica = connections[alias]
    deadline_connection_arm(replica)
    with replica.execute_wrapper(deadline_execute):
        yield


def _statement_cancelled(error: BaseException) -> bool:
    return isinstance(error, psycopg.errors.QueryCanceled) or isinstance(error.__cause__, psycopg.errors.QueryCanceled)


def _replica_failed(alias: str, error: Exception) -> None:
    cause = error if isinstance(error, psycopg.Error) else error.__cause__
    state = getattr(cause, "sqlstate", None) or ""
    if not state or state.startswith(CONNECTION_STATES):
        replica_mark_down(alias=alias, detail=f"{type(error).__name__}: {error}".strip())
        _close_quietly(alias)
    logger.warning("a read on %s failed (%s); answered from the primary", alias, state or error)


def _close_quietly(alias: str) -> None:
    try:
        connections[alias].close()
    except DatabaseError:
        pass


# ---- health -----------------------------------------------------------------------------------------


def replica_health(*, alias: str) -> ReplicaHealth:
    """This process's view of ``alias``: measured now when the last measure is older than
    RECSYS_REPLICA_CHECK_SECONDS (one thread measures; the others use the last one meanwhile)."""
    now = time.monotonic()
    with _health_lock:
        known = _health.get(alias)
        fresh = known is not None and now - known.checked_at < settings.RECSYS_REPLICA_CHECK_SECONDS
        if fresh or (known is not None and alias in _checking):
            return known  # type: ignore[return-value]
        _checking.add(alias)
    try:
        measured = replica_check(alias=alias)
    finally:
        with _health_lock:
            _checking.discard(alias)
    with _health_lock:
        _health[alias] = measured
    return measured


def replicas_health() -> list[ReplicaHealth]:
    """Every configured replica's health (health endpoint, dashboard)."""
    return [replica_health(alias=alias) for alias in replica_aliases()]


def replica_mark_down(*, alias: str, detail: str) -> None:
    with _health_lock:
        _health[alias] = ReplicaHealth(alias, DOWN, None, time.monotonic(), detail)


def replica_health_forget() -> None:
    """Forget every measure and this process's read-your-writes marks (tests; the next read
    measures again, and only Redis knows who wrote)."""
    with _health_lock:
        _health.clear()
        _wrote_here.clear()


_REPLAY = """
    SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn,
           extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""


def replica_check(*, alias: str) -> ReplicaHealth:
    """Measure a replica's lag: 0 when it has replayed everything the primary had written when
    asked (an idle primary is not lag), else the age of its last replayed commit."""
    now = time.monotonic()
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END")
            primary_lsn = cursor.fetchone()[0]
        with connections[alias].cursor() as cursor:
            cursor.execute(_REPLAY, [primary_lsn or "0/0"])
            standby, caught_up, age = cursor.fetchone()
            if standby and not caught_up:
                time.sleep(RECHECK_PAUSE_SECONDS)
                cursor.execute(_REPLAY, [primary_lsn or "0/0"])
                standby, caught_up, age = cursor.fetchone()
    except DatabaseError as error:
        _close_quietly(alias)
        return ReplicaHealth(alias, DOWN, None, now, f"{type(error).__name__}: {error}".strip())
    if not standby:
        return ReplicaHealth(alias, DOWN, None, now, "not a standby: pg_is_in_recovery() is false")
    if not caught_up and age is None:
        # Behind the primary with no commit replayed since it started (pg_last_xact_replay_timestamp()
        # is NULL then): how far behind is unknown, maybe days (a standby that cannot resume streaming).
        return ReplicaHealth(alias, LAGGING, None, now, "behind the primary; no commit replayed since it started")
    lag = 0.0 if caught_up else max(float(age), 0.0)
    state = OK if lag <= settings.RECSYS_REPLICA_MAX_LAG_SECONDS else LAGGING
    return ReplicaHealth(alias, state, round(lag, 3), now)


# ---- read-your-writes -------------------------------------------------------------------------------


def _wrote_key(external_id: str) -> str:
    return redis_store.key(f"wrote:{external_id}")


def users_wrote(*, external_ids: Iterable[str]) -> None:
    """These users read the primary for RECSYS_READ_YOUR_WRITES_SECONDS after the current
    transaction commits (at once outside one). Nothing to do without replicas."""
    users = sorted(set(external_ids))
    if users and replica_aliases():
        transaction.on_commit(lambda: _users_mark(users))


def _users_mark(users: list[str]) -> None:
    seconds = settings.RECSYS_READ_YOUR_WRITES_SECONDS
    until = time.monotonic() + seconds
    with _health_lock:
        for user in users:
            _wrote_here[user] = until
        if len(_wrote_here) > 100_000:  # forget the expired ones now and then
            now = time.monotonic()
            for user in [u for u, t in _wrote_here.items() if t < now]:
                del _wrote_here[user]

    def mark(client: Any) -> None:
        with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.set(_wrote_key(user), "1", px=int(seconds * 1000))
            pipe.execute()

    try:
        redis_store.run(mark)
    except redis_store.RedisUnavailable:
        logger.warning("read-your-writes marks of %d users kept in this process only (Redis is away)", len(users))


def user_recently_wrote(*, external_id: str) -> bool:
    """True while ``external_id`` must read the primary; also while Redis does not answer, since
    another process's marks cannot be seen then."""
    if _wrote_here.get(external_id, 0.0) > time.monotonic():
        return True
    try:
        return bool(redis_store.run(lambda client: client.exists(_wrote_key(external_id))))
    except redis_store.RedisUnavailable:
        return True
