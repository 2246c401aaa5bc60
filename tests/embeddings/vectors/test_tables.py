"""Per-version vector tables: COPY in, HNSW index, cascade on delete, drop whole."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from embeddings.vectors import tables
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return bool(cursor.fetchone()[0])


def test_vectors_are_copied_indexed_and_searchable_by_inner_product():
    items = [ItemFactory() for _ in range(3)]
    vectors = np.array([[1, 0], [0, 1], [0.7, 0.7]], dtype=np.float32)
    tables.tables_create(9001, 2)

    copied = tables.vectors_copy(9001, "item", np.array([i.pk for i in items]), vectors)
    tables.index_build(9001, "item")

    with connection.cursor() as cursor:
        cursor.execute("SELECT item_id FROM embeddings_v9001_item ORDER BY embedding <#> '[1, 0.1]' LIMIT 2")
        nearest = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings_v9001_item'")
        indexes = " ".join(row[0] for row in cursor.fetchall())
    assert copied == 3
    assert nearest == [items[0].pk, items[2].pk]
    assert "hnsw" in indexes and "vector_ip_ops" in indexes


def test_rows_of_owners_deleted_since_the_ids_were_read_are_skipped_not_a_failed_copy():
    # A training run reads its ids minutes before it stores the vectors; a user deleted meanwhile
    # (before: ForeignKeyViolation, and the run failed)
    items = [ItemFactory() for _ in range(3)]
    ids = np.array([i.pk for i in items])
    items[1].delete()
    tables.tables_create(9005, 2)

    copied = tables.vectors_copy(9005, "item", ids, np.eye(3, 2, dtype=np.float32), fold_in=np.ones((3, 2), np.float32))

    with connection.cursor() as cursor:
        cursor.execute("SELECT item_id FROM embeddings_v9005_item ORDER BY item_id")
        stored = [row[0] for row in cursor.fetchall()]
    assert copied == 2 and stored == [items[0].pk, items[2].pk]


def test_deleting_an_item_removes_its_vectors():
    item = ItemFactory()
    tables.tables_create(9002, 2)
    tables.vectors_copy(9002, "item", np.array([item.pk]), np.ones((1, 2), np.float32))

    item.delete()

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM embeddings_v9002_item")
        assert cursor.fetchone()[0] == 0


def test_dropping_a_version_drops_its_tables():
    tables.tables_create(9003, 4)
    assert table_exists("embeddings_v9003_item") and table_exists("embeddings_v9003_user")

    tables.tables_drop(9003)

    assert not table_exists("embeddings_v9003_item") and not table_exists("embeddings_v9003_user")


def test_mismatched_ids_and_vectors_are_refused():
    with pytest.raises(ValueError):
        tables.vectors_copy(9004, "item", np.array([1, 2]), np.ones((1, 2), np.float32))
