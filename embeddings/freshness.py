"""Keep user vectors fresh between retrains: fold in users whose interactions changed.

Ingestion adds the users to a pending set in Redis and schedules one fold-in task (at most one
per second, however many batches arrive); the task folds in every pending user in bulk and
writes their vectors into the active version. Without Redis nothing is lost: users without a
stored vector are folded in at request time, and a beat sweep folds in every user whose latest
interaction is newer than their stored vector once the worker can run it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import connection, transaction

from embeddings.answer_cache import answers_invalidate
from embeddings.fold_in import FoldIn
from embeddings.models import ActiveVersion, Kind
from embeddings.vectors import rows
from recsys.replicas import users_wrote

logger = logging.getLogger(__name__)
PENDING_KEY = "recsys:foldin:pending"
SCHEDULED_KEY = "recsys:foldin:scheduled"
DEBOUNCE_SECONDS = 1
FOLD_IN_BATCH_USERS = 200  # users per round trip of a bulk fold-in


def _redis() -> Any:
    from recsys import redis_store

    return redis_store.client("broker")


def fold_ins_pending_clear() -> None:
    """Forget every queued fold-in (tests start clean; a retrain makes them moot too)."""
    _redis().delete(PENDING_KEY, SCHEDULED_KEY)


def fold_ins_pending() -> set[int]:
    """The users whose fold-in is queued and not yet done."""
    return {int(u) for u in _redis().smembers(PENDING_KEY)}


def users_fold_in_schedule(*, user_ids: list[int]) -> bool:
    """Queue users for a fold-in; returns False (and logs) when Redis is unavailable."""
    if not user_ids:
        return False
    from embeddings import tasks

    try:
        # Inside: callers run this after their batch is stored, and a database that went away just
        # then must not turn the batch's answer into an error (the sweep covers these users).
        if not ActiveVersion.objects.filter(kind=Kind.COLLABORATIVE).exists():
            return False
        client = _redis()
        client.sadd(PENDING_KEY, *user_ids)
        if client.set(SCHEDULED_KEY, 1, nx=True, ex=DEBOUNCE_SECONDS * 10):
            transaction.on_commit(lambda: tasks.users_fold_in.apply_async(countdown=DEBOUNCE_SECONDS))
    except Exception:  # Redis or PostgreSQL down: request-time fold-in and the sweep cover these users
        logger.warning("could not queue %d users for fold-in", len(user_ids), exc_info=True)
        return False
    return True


def users_fold_in_pending() -> int:
    """Fold in every pending user; returns how many vectors were written."""
    client = _redis()
    client.delete(SCHEDULED_KEY)  # batches arriving from now on schedule the next run
    with client.pipeline() as pipe:
        pipe.smembers(PENDING_KEY)
        pipe.delete(PENDING_KEY)
        members, _ = pipe.execute()
    return users_fold_in(user_ids=sorted(int(m) for m in members))


SWEEP_MAX_USERS = 20_000


def users_fold_in_sweep(*, lookback_seconds: float) -> int:
    """Fold in users whose fold-in was never queued (Redis was away) or got lost; returns how
    many vectors were written. The beat runs it every minute; idempotent."""
    pointer = ActiveVersion.objects.select_related("version").filter(kind=Kind.COLLABORATIVE).first()
    if pointer is None:
        return 0
    stale = rows.users_stale(
        user_table=pointer.version.user_table, lookback_seconds=lookback_seconds, limit=SWEEP_MAX_USERS
    )
    return users_fold_in(user_ids=stale)


def users_fold_in(*, user_ids: list[int]) -> int:
    """Recompute the active collaborative version's vectors of these users from their histories.

    A batch of users at a time (three statements each), so a task's memory stays bounded however
    many users are pending and however long their histories have grown.
    """
    pointer = ActiveVersion.objects.select_related("version").filter(kind=Kind.COLLABORATIVE).first()
    if pointer is None or not user_ids:
        return 0
    solver = FoldIn(pointer.version)
    written = 0
    for start in range(0, len(user_ids), FOLD_IN_BATCH_USERS):
        histories = _histories(user_ids[start : start + FOLD_IN_BATCH_USERS])
        if not histories:
            continue
        known, factors = solver.item_vectors(np.unique(np.concatenate([items for items, _ in histories.values()])))
        vectors = {user: solver.vector(items, weights, known, factors) for user, (items, weights) in histories.items()}
        stored = rows.user_vectors_upsert(
            user_table=pointer.version.user_table, vectors={u: v for u, v in vectors.items() if v is not None}
        )
        # A history that no longer folds in (only dislikes left) must not keep serving the vector
        # its earlier likes gave.
        stored += rows.user_vectors_delete(
            user_table=pointer.version.user_table, user_ids=[u for u, v in vectors.items() if v is None]
        )
        # First: no replica serves them a vector older than this one; then their cached answers go
        # stale (the other order let a request between the two cache an answer from a lagging replica).
        users_wrote(external_ids=stored)
        answers_invalidate(owners=[f"user:{external_id}" for external_id in stored])
        written += len(stored)
    return written


def _histories(user_ids: list[int]) -> dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Each user's items and summed weights, one row per user (read row by row: the result is
    held by libpq, and only one user's history at a time becomes Python objects)."""
    histories = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id, array_agg(item_id), array_agg(weight) FROM ("
            "  SELECT user_id, item_id, sum(weight)::float8 AS weight FROM recsys_interaction"
            "  WHERE user_id = ANY(%s) GROUP BY user_id, item_id"
            ") AS history GROUP BY user_id",
            [user_ids],
        )
        for user, items, weights in cursor:
            histories[int(user)] = (np.array(items, dtype=np.int64), np.array(weights, dtype=np.float32))
    return histories
