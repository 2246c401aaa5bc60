"""What every serving path shares: the answer types, the active versions, the answer cache around a
computation, and how neighbours and versions are written into an answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from django.db import ProgrammingError, connection, transaction

from embeddings.answer_cache import answer_cached
from embeddings.models import Kind, ModelVersion
from embeddings.selectors import active_version_serving, active_version_serving_forget
from embeddings.vectors.search import Filters, Neighbour, nearest_items
from recsys.models import Item


@dataclass
class Recommendation:
    id: str
    score: float
    reason: dict[str, Any] | None = None
    until: float | None = None  # the end of the item's availability window (epoch seconds); not rendered
    boosts: tuple[bool, ...] | None = None  # matches of the rules' boosts, read with it (None: not read)


@dataclass
class Answer:
    items: list[Recommendation]
    model: dict[str, Any] | None
    strategy: str


def active(kind: str = Kind.COLLABORATIVE) -> ModelVersion | None:
    """The version serving ``kind`` in this process (cached briefly; see active_version_serving)."""
    return active_version_serving(kind=kind)


def answer_decode(data: dict[str, Any]) -> Answer:
    return Answer([Recommendation(**item) for item in data["items"]], data["model"], data["strategy"])


def answer_through_cache(owner: str, variant: str, compute: Callable[[], Answer]) -> Answer:
    """``compute()`` through the answer cache; a version pruned under a stale pointer is re-read once."""

    def fresh() -> Answer:
        try:
            # Outside a transaction (the serving path) a failed statement costs nothing; inside
            # one, a savepoint keeps it from poisoning the rest.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                return compute()
        except ProgrammingError as error:
            if not isinstance(error.__cause__, psycopg.errors.UndefinedTable):
                raise
            active_version_serving_forget()
            return compute()

    # The versions are part of the key too, so a switch this process saw can never be answered
    # from before it, even if Redis missed the switch's invalidation.
    versions = [getattr(active(kind), "pk", None) for kind in Kind.values]
    answer: Answer = answer_cached(owner=owner, variant=f"{versions}{variant}", compute=fresh, decode=answer_decode)
    now = time.time()
    if any(item.until is not None and item.until <= now for item in answer.items):
        return fresh()  # an item's availability window closed since the answer was cached
    return answer


def model_ref(version: ModelVersion | None) -> dict[str, Any] | None:
    return {"kind": version.kind, "version": version.pk} if version else None


def version_nearest_items(
    version: ModelVersion,
    query: npt.NDArray[np.float32],
    *,
    limit: int,
    filters: Filters,
    widen: bool = True,
) -> list[Neighbour]:
    """``nearest_items`` over a model version's item table, in that version's vector type (the two
    always go together: a table searched as another type would miss its HNSW index) and at its own
    ef_search."""
    return nearest_items(
        version.item_table,
        query,
        vector_type=version.vector_type,
        limit=limit,
        filters=filters,
        widen=widen,
        ef_search=version.served_ef_search,
    )


def from_neighbours(neighbours: list[Neighbour]) -> list[Recommendation]:
    return [
        Recommendation(n.external_id, round(n.score, 6), until=n.until, boosts=n.boosts or None) for n in neighbours
    ]


def query_column(version: ModelVersion) -> str:
    """The column that stands for items in a query: EASE's input side (what a user who chose the
    item would be), the item embedding itself for the factorisation models."""
    return "fold_in" if version.algorithm == "ease" else "embedding"


def item_ids(external_ids: tuple[str, ...] | list[str]) -> list[int]:
    if not external_ids:  # the usual case: building an empty ORM query costs 0.1 ms of the hot path
        return []
    return list(Item.objects.filter(external_id__in=list(external_ids)).values_list("pk", flat=True))
