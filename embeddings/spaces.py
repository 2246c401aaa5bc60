"""Custom vector spaces: client-computed item vectors (image embeddings, say), one indexed table per space."""

from __future__ import annotations

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from embeddings.models import VectorSpace
from embeddings.vectors import rows, tables
from recsys.errors import ItemNotFound, ValidationFailed
from recsys.models import Item
from recsys.numbers import finite_number
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
        created = rows.custom_vector_upsert(space_table=vector_space.table, item_id=item_id, vector=values)
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
    if not isinstance(vector, list) or not 1 <= len(vector) <= limit or not all(finite_number(v) for v in vector):
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
        tables.space_table_create(space.name, space.dimensions)
    if space.dimensions != dimensions:
        raise ValidationFailed(  # 400, as issue 4 asks: the vector is wrong for this space
            f"space {name!r} holds {space.dimensions}-dimensional vectors; this one has {dimensions}",
            details={"vector": [f"expected {space.dimensions} dimensions"]},
        )
    return space
