"""Custom vector spaces: client-computed item vectors (image embeddings, say), one indexed table per space."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from pgvector import Vector
from psycopg import sql

from embeddings.models import VectorSpace
from embeddings.vector_store import HNSW_EF_CONSTRUCTION, HNSW_M
from recsys.errors import ItemNotFound, ValidationFailed
from recsys.models import Item
from recsys.validation import BUILT_IN_SPACES, SPACE_NAME_RE


def item_vector_put(*, item_external_id: str, space: str, vector: object) -> tuple[VectorSpace, bool]:
    """Store an item's vector in ``space`` (created by its first vector, which fixes the
    dimensions); vectors are L2-normalised, so similarity in a custom space is cosine.
    Returns the space and whether this created the item's vector (False: replaced)."""
    _check_space_name(space)
    values = _clean_vector(vector)
    item_id = Item.objects.filter(external_id=item_external_id).values_list("pk", flat=True).first()
    if item_id is None:
        raise ItemNotFound(f"item {item_external_id!r} does not exist")
    with transaction.atomic():
        vector_space = _space_for(space, len(values))
        statement = sql.SQL(
            "INSERT INTO {table} (item_id, embedding) VALUES (%s, %s::vector) ON CONFLICT (item_id) DO UPDATE "
            "SET embedding = EXCLUDED.embedding, updated_at = now() RETURNING (xmax = 0)"
        ).format(table=sql.Identifier(vector_space.table))
        with connection.cursor() as cursor:
            cursor.execute(statement.as_string(connection.connection), [item_id, Vector(values).to_text()])
            created = bool(cursor.fetchone()[0])
    return vector_space, created


def _check_space_name(space: str) -> None:
    if space in BUILT_IN_SPACES or not SPACE_NAME_RE.fullmatch(space):
        raise ValidationFailed(
            "a custom space is named by 1-40 lowercase letters, digits or '_', starting with a letter, "
            f"and is not one of {', '.join(BUILT_IN_SPACES)}",
            details={"space": ["invalid name"]},
        )


def _clean_vector(vector: object) -> np.ndarray:
    limit = settings.RECSYS_CUSTOM_VECTOR_MAX_DIMENSIONS
    if (
        not isinstance(vector, list)
        or not 1 <= len(vector) <= limit
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in vector)
    ):
        raise ValidationFailed(f"vector must be a list of 1 to {limit} finite numbers", details={"vector": ["invalid"]})
    values = np.asarray(vector, dtype=np.float64)
    largest = float(np.abs(values).max())
    if largest == 0.0:
        raise ValidationFailed("vector must not be all zeros", details={"vector": ["zero vector"]})
    values /= largest  # scaled first: squares of numbers near float limits would overflow or vanish
    return (values / np.linalg.norm(values)).astype(np.float32)


def _space_for(name: str, dimensions: int) -> VectorSpace:
    """The space, created with its table and HNSW index on first use; a vector of other
    dimensions than the space's is refused."""
    with connection.cursor() as cursor:  # concurrent first vectors of one space: one creates it
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"recsys:space:{name}"])
    space = VectorSpace.objects.filter(name=name).first()
    if space is None:
        space = VectorSpace.objects.create(name=name, dimensions=dimensions)
        _table_create(space)
    if space.dimensions != dimensions:
        raise ValidationFailed(  # 400, as issue 4 asks: the vector is wrong for this space
            f"space {name!r} holds {space.dimensions}-dimensional vectors; this one has {dimensions}",
            details={"vector": [f"expected {space.dimensions} dimensions"]},
        )
    return space


def _table_create(space: VectorSpace) -> None:
    # Unlike model versions, custom vectors arrive one by one: the index exists from the start.
    statements: list[Any] = [
        sql.SQL(
            "CREATE TABLE {table} ("
            " item_id bigint PRIMARY KEY REFERENCES recsys_item (id) ON DELETE CASCADE,"
            " embedding vector({dims}) NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(table=sql.Identifier(space.table), dims=sql.Literal(space.dimensions)),
        sql.SQL(
            "CREATE INDEX {index} ON {table} USING hnsw (embedding vector_ip_ops)"
            " WITH (m = {m}, ef_construction = {ef})"
        ).format(
            index=sql.Identifier(f"{space.table}_hnsw"),
            table=sql.Identifier(space.table),
            m=sql.Literal(HNSW_M),
            ef=sql.Literal(HNSW_EF_CONSTRUCTION),
        ),
    ]
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement.as_string(connection.connection))
