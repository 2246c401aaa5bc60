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
from psycopg import sql

from embeddings.answer_cache import answers_invalidate
from embeddings.learners import fold_in
from embeddings.models import ActiveVersion, Kind, ModelVersion
from embeddings.vector_search import vector_connection, vectors_matrix

logger = logging.getLogger(__name__)
PENDING_KEY = "recsys:foldin:pending"
SCHEDULED_KEY = "recsys:foldin:scheduled"
DEBOUNCE_SECONDS = 1
FOLD_IN_BATCH_USERS = 200  # users per round trip of a bulk fold-in


def _redis() -> Any:
    from recsys import redis_store

    return redis_store.client("broker")


def users_fold_in_schedule(*, user_ids: list[int]) -> bool:
    """Queue users for a fold-in; returns False (and logs) when Redis is unavailable."""
    if not user_ids or not ActiveVersion.objects.filter(kind=Kind.COLLABORATIVE).exists():
        return False
    from embeddings import tasks

    try:
        client = _redis()
        client.sadd(PENDING_KEY, *user_ids)
        if client.set(SCHEDULED_KEY, 1, nx=True, ex=DEBOUNCE_SECONDS * 10):
            transaction.on_commit(lambda: tasks.users_fold_in.apply_async(countdown=DEBOUNCE_SECONDS))
    except Exception:  # Redis down: request-time fold-in and the next retrain cover these users
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


# Users whose latest interaction is newer than their vector in the active version, among those
# with interactions stored in the lookback window (the BRIN index on created_at keeps it cheap).
_STALE_USERS = """
    SELECT x.user_id FROM recsys_interaction x LEFT JOIN {table} v ON v.user_id = x.user_id
    WHERE x.created_at > now() - %s * interval '1 second'
    GROUP BY x.user_id, v.updated_at
    HAVING v.updated_at IS NULL OR max(x.created_at) > v.updated_at
    LIMIT %s
"""
SWEEP_MAX_USERS = 20_000


def users_fold_in_sweep(*, lookback_seconds: float) -> int:
    """Fold in users whose fold-in was never queued (Redis was away) or got lost; returns how
    many vectors were written. The beat runs it every minute; idempotent."""
    pointer = ActiveVersion.objects.select_related("version").filter(kind=Kind.COLLABORATIVE).first()
    if pointer is None:
        return 0
    statement = sql.SQL(_STALE_USERS).format(table=sql.Identifier(pointer.version.user_table))
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(connection.connection), [lookback_seconds, SWEEP_MAX_USERS])
        stale = [int(row[0]) for row in cursor.fetchall()]
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
        written += _vectors_upsert(pointer.version, {u: v for u, v in vectors.items() if v is not None})
    return written


def _histories(user_ids: list[int]) -> dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Each user's items and summed weights, one row per user (read row by row: the result is
    held by libpq, and only one user's history at a time becomes Python objects)."""
    histories = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id, array_agg(item_id), array_agg(weight) FROM ("
            "  SELECT user_id, item_id, sum(weight)::float4 AS weight FROM recsys_interaction"
            "  WHERE user_id = ANY(%s) GROUP BY user_id, item_id"
            ") AS history GROUP BY user_id",
            [user_ids],
        )
        for user, items, weights in cursor:
            histories[int(user)] = (np.array(items, dtype=np.int64), np.array(weights, dtype=np.float32))
    return histories


class FoldIn:
    """User vectors of one version from their items and summed weights, without retraining.

    EASE folds in exactly as Σ weight × item input vector; ALS/BPR/LMF solve ALS's user step
    against the version's item factors (exact for ALS trained on raw weights).
    """

    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        self.column = "fold_in" if version.algorithm == "ease" else "embedding"
        self.gram = None if version.item_gram is None else np.asarray(version.item_gram, dtype=np.float64)
        self.regularization = float(version.params.get("regularization", 0.05))
        self.alpha = float(version.params.get("alpha", 1.0))

    def item_vectors(self, items: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The version's vectors of these items: (sorted ids of those it has, their rows)."""
        return vectors_matrix(self.version.item_table, "item_id", items, column=self.column)

    def vector(
        self,
        items: npt.NDArray[np.int64],
        weights: npt.NDArray[np.float32],
        known: npt.NDArray[np.int64],
        factors: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32] | None:
        """A user's vector from ``item_vectors`` that cover their items; None when the version
        knows none of them (or no solver state is stored)."""
        at = np.searchsorted(known, items)
        usable = at < len(known)
        usable[usable] = known[at[usable]] == items[usable]
        usable &= weights != 0
        if not usable.any():
            return None
        rows, weights = factors[at[usable]], weights[usable]
        if self.version.algorithm == "ease":
            return (weights @ rows).astype(np.float32)
        if self.gram is None:
            return None
        return fold_in(rows, weights, gram=self.gram, regularization=self.regularization, alpha=self.alpha)


def user_vector_fold_in(
    version: ModelVersion, items: list[int], weights: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32] | None:
    """One user's vector of ``version`` from their items and summed weights (request time)."""
    solver = FoldIn(version)
    ids = np.asarray(items, dtype=np.int64)
    known, factors = solver.item_vectors(np.unique(ids))
    return solver.vector(ids, np.asarray(weights, dtype=np.float32), known, factors)


def _vectors_upsert(version: ModelVersion, vectors: dict[int, np.ndarray]) -> int:
    if not vectors:
        return 0
    from pgvector import Vector

    statement = sql.SQL(
        "INSERT INTO {table} (user_id, embedding, updated_at) SELECT u, e::vector, now() "
        "FROM unnest(%s::int8[], %s::text[]) AS t(u, e) JOIN recsys_user ON recsys_user.id = t.u "
        "ON CONFLICT (user_id) DO UPDATE SET embedding = EXCLUDED.embedding, updated_at = now() "
        "RETURNING (SELECT external_id FROM recsys_user WHERE id = user_id)"
    ).format(table=sql.Identifier(version.user_table))
    ids = list(vectors)
    texts = [Vector(vectors[u]).to_text() for u in ids]
    with transaction.atomic(), vector_connection().cursor() as cursor:
        cursor.execute(statement, [ids, texts])
        answers_invalidate(owners=[f"user:{row[0]}" for row in cursor.fetchall()])
    return len(ids)
