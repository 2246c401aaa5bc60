"""Versions of many items store halfvec where pgvector has it (0.7+): the choice, the tables, the index,
COPY, and every reader of a halfvec version (training, personalised, similar, fold-ins, session,
content search, cold placement, the map).

The halfvec tests need pgvector ≥ 0.7: they skip on the embedded server's 0.6 and run in CI's second
pass against PostgreSQL 15 with pgvector 0.8, with RECSYS_HALFVEC_MIN_ITEMS lowered so a version of
30 items uses halfvec.
"""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from embeddings import content, services
from embeddings.cold_placement import cold_items_place
from embeddings.freshness import users_fold_in
from embeddings.learners import LearnerParams
from embeddings.maps import embedding_map_compute
from embeddings.models import ModelVersion
from embeddings.vectors import tables
from embeddings.vectors.rows import vectors_of
from embeddings.vectors.search import nearest_items
from recsys.models import User
from recsys.services import interactions_ingest, items_upsert
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def halfvec_server(db):
    if not tables.halfvec_available():
        version = ".".join(map(str, tables.pgvector_version()))
        pytest.skip(f"pgvector {version} on this server has no halfvec (0.7 or later; CI's PostgreSQL 15 has 0.8)")


@pytest.fixture
def low_threshold(settings):
    settings.RECSYS_HALFVEC_MIN_ITEMS = 1
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_RANKING = False


def column_types(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname IN ('embedding', 'fold_in')",
            [table],
        )
        return dict(cursor.fetchall())


def index_plan(table: str, query: object) -> str:
    """The plan of an inner-product search of ``table`` for ``query`` with sequential scans off (a
    table of 3 rows is otherwise read whole): an HNSW index scan shows that the operator and the
    parameter's type are the ones the index serves. SET LOCAL: it ends with the test's transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    with tables.cursor() as cur:
        cur.execute(f"EXPLAIN SELECT item_id FROM {table} ORDER BY embedding <#> %s LIMIT 2", [query])
        return "\n".join(r[0] for r in cur.fetchall())


def community(item_id: str) -> int:
    return 0 if int(item_id.removeprefix("i")) < 15 else 1


@pytest.fixture
def trained(communities, halfvec_server, low_threshold) -> ModelVersion:
    items_upsert(
        rows=[{"id": f"i{n}", "title": f"Item {n}", "categories": ["first" if n < 15 else "second"]} for n in range(30)]
    )
    version = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=10))
    return services.collaborative_model_train(version_id=version.pk)


# ---- the choice ----------------------------------------------------------------------------------


def test_threshold_zero_never_chooses_halfvec(settings):
    settings.RECSYS_HALFVEC_MIN_ITEMS = 0

    assert tables.vector_type_choose(items=10**9) == tables.VECTOR


def test_a_catalogue_below_the_threshold_stays_vector(settings):
    settings.RECSYS_HALFVEC_MIN_ITEMS = 1_000_000

    assert tables.vector_type_choose(items=999_999) == tables.VECTOR


def test_a_catalogue_at_the_threshold_chooses_halfvec(halfvec_server, settings):
    settings.RECSYS_HALFVEC_MIN_ITEMS = 1_000_000

    assert tables.vector_type_choose(items=1_000_000, values=[np.ones((3, 2), np.float32)]) == tables.HALFVEC


def test_values_outside_float16_keep_a_version_on_vector(halfvec_server, settings):
    settings.RECSYS_HALFVEC_MIN_ITEMS = 1

    big = np.array([[70_000.0, 1.0]], np.float32)
    assert tables.vector_type_choose(items=5, values=[np.ones((3, 2), np.float32), big]) == tables.VECTOR
    assert tables.vector_type_choose(items=5, values=[np.array([[np.nan, 1]], np.float32)]) == tables.VECTOR


def test_a_server_without_halfvec_keeps_vector_at_any_size(db, settings):
    if tables.halfvec_available():
        pytest.skip("this server's pgvector has halfvec (the embedded 0.6 has not)")
    settings.RECSYS_HALFVEC_MIN_ITEMS = 1

    assert tables.vector_type_choose(items=10**9) == tables.VECTOR


def test_an_unknown_vector_type_is_refused():
    with pytest.raises(ValueError, match="vector_type must be one of vector, halfvec"):
        tables.query_vector(np.ones(2, np.float32), "float8")


# ---- tables, COPY, index, search -----------------------------------------------------------------


def test_halfvec_tables_copy_float16_values_and_search_through_their_index(halfvec_server):
    items = [ItemFactory() for _ in range(3)]
    ids = np.array([i.pk for i in items])
    vectors = np.array([[1, 0], [0, 1], [0.7, 0.7001]], dtype=np.float32)
    tables.tables_create(9101, 2, tables.HALFVEC)

    copied = tables.vectors_copy(9101, "item", ids, vectors, fold_in=2 * vectors, vector_type=tables.HALFVEC)
    tables.index_build(9101, "item", tables.HALFVEC)
    query = np.array([1, 0.1], np.float32)
    nearest = nearest_items("embeddings_v9101_item", query, vector_type="halfvec", limit=2)

    assert copied == 3
    assert column_types("embeddings_v9101_item") == {"embedding": "halfvec(2)", "fold_in": "halfvec(2)"}
    assert column_types("embeddings_v9101_user") == {"embedding": "halfvec(2)", "fold_in": "halfvec(2)"}
    stored = vectors_of("embeddings_v9101_item", "item_id", ids.tolist())
    assert np.array_equal(stored[items[2].pk], vectors[2].astype(np.float16).astype(np.float32))
    folded = vectors_of("embeddings_v9101_item", "item_id", ids.tolist(), column="fold_in")
    assert np.array_equal(folded[items[1].pk], [0, 2])
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings_v9101_item'")
        assert "hnsw (embedding halfvec_ip_ops)" in " ".join(r[0] for r in cursor.fetchall())
    assert [n.item_id for n in nearest] == [items[0].pk, items[2].pk]
    assert nearest[0].score == pytest.approx(1.0)
    plan = index_plan("embeddings_v9101_item", tables.query_vector(query, tables.HALFVEC))
    assert "Index Scan using embeddings_v9101_item_hnsw" in plan, plan


def test_a_vector_version_is_unchanged(db):
    items = [ItemFactory() for _ in range(2)]
    tables.tables_create(9102, 2)

    tables.vectors_copy(9102, "item", np.array([i.pk for i in items]), np.eye(2, dtype=np.float32) / 3)
    tables.index_build(9102, "item")

    assert column_types("embeddings_v9102_item") == {"embedding": "vector(2)", "fold_in": "vector(2)"}
    stored = vectors_of("embeddings_v9102_item", "item_id", [items[0].pk])[items[0].pk]
    assert stored.tolist() == [np.float32(1 / 3), 0.0]  # float32 exactly, not rounded to float16


def test_values_outside_float16_are_refused_by_a_halfvec_copy(halfvec_server):
    item = ItemFactory()
    tables.tables_create(9103, 2, tables.HALFVEC)

    with pytest.raises(ValueError, match="float16"):
        tables.vectors_copy(9103, "item", np.array([item.pk]), np.array([[1e6, 0]], np.float32), vector_type="halfvec")


def test_a_copy_larger_than_one_buffer_keeps_every_row(db, monkeypatch):
    items = [ItemFactory() for _ in range(5)]
    monkeypatch.setattr(tables, "COPY_ROWS", 2)  # three buffers: 2 + 2 + 1 rows
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    tables.tables_create(9104, 2)

    tables.vectors_copy(9104, "item", np.array([i.pk for i in items]), vectors, fold_in=-vectors)

    stored = vectors_of("embeddings_v9104_item", "item_id", [i.pk for i in items], column="fold_in")
    assert np.array_equal(np.stack([stored[i.pk] for i in items]), -vectors)


# ---- a halfvec version end to end ----------------------------------------------------------------


def test_a_large_catalogue_trains_into_halfvec_tables_and_records_it(trained):
    assert trained.vector_type == "halfvec"
    assert ModelVersion.objects.get(pk=trained.pk).vector_type == "halfvec"
    assert column_types(trained.item_table)["embedding"] == "halfvec(8)"
    assert column_types(trained.user_table)["embedding"] == "halfvec(8)"


def test_personalised_and_similar_answers_come_from_the_halfvec_version(reader, trained):
    body = reader.get("/api/v1/users/u3/recommendations?limit=3").json()
    similar = reader.get("/api/v1/items/i3/similar?limit=5").json()

    assert body["strategy"] == "collaborative" and len(body["items"]) == 3
    assert all(community(i["id"]) == 0 for i in body["items"])
    assert similar["strategy"] == "collaborative" and "i3" not in [i["id"] for i in similar["items"]]
    assert sum(community(i["id"]) == 0 for i in similar["items"]) >= 4


def test_a_new_user_is_folded_in_at_request_time_and_by_the_worker(reader, trained, settings):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0  # the second request must search again
    interactions_ingest(rows=[{"user": "newcomer", "item": f"i{n}", "type": "purchase"} for n in (20, 21, 22)])

    at_request = reader.get("/api/v1/users/newcomer/recommendations?limit=5").json()
    users_fold_in(user_ids=[User.objects.get(external_id="newcomer").pk])
    stored = reader.get("/api/v1/users/newcomer/recommendations?limit=5").json()

    assert at_request["strategy"] == "collaborative_fold_in"
    assert stored["strategy"] == "collaborative"  # its stored halfvec row, in the one-statement search
    for body in (at_request, stored):
        assert sum(community(i["id"]) == 1 for i in body["items"]) >= 4


def test_session_recommendations_search_the_halfvec_version(reader, trained):
    body = reader.post("/api/v1/recommendations", {"items": ["i16", "i17"], "limit": 5}, format="json").json()

    assert body["strategy"] == "collaborative_session"
    assert sum(community(i["id"]) == 1 for i in body["items"]) >= 4


def test_the_map_of_a_halfvec_version_is_computed(trained):
    computed = embedding_map_compute(version_id=trained.pk)

    assert computed.state == "ready" and computed.sample_size == 30


def test_content_search_and_cold_placement_work_on_halfvec_versions(
    reader, communities, halfvec_server, low_threshold, settings
):
    settings.RECSYS_CONTENT_ENCODER = "fake"
    topics = {0: "telescope planets galaxies comet stars", 1: "pasta garlic basil tomato sauce"}
    items_upsert(rows=[{"id": f"i{n}", "title": f"Item {n}", "text": topics[n >= 15] + f" n{n}"} for n in range(30)])
    built = content.content_model_build(version_id=content.content_version_create().pk)
    trained = services.collaborative_model_train(
        version_id=services.collaborative_version_create(params=LearnerParams(factors=8, iterations=10)).pk
    )
    items_upsert(rows=[{"id": "new-scope", "title": "telescope planets", "text": "galaxies comet stars telescope"}])
    content.content_items_encode()

    placed = cold_items_place()
    search = reader.get("/api/v1/search?q=telescope comet&mode=semantic&limit=3").json()
    by_content = reader.get("/api/v1/items/i3/similar?limit=5&space=content").json()
    cold = reader.get("/api/v1/items/new-scope/similar?limit=5&space=collaborative").json()

    assert (built.vector_type, trained.vector_type) == ("halfvec", "halfvec")
    assert column_types(built.item_table)["embedding"].startswith("halfvec(")
    assert placed == 1
    assert search["items"] and all(community(i["id"]) == 0 for i in search["items"] if i["id"] != "new-scope")
    assert by_content["strategy"] == "content" and sum(community(i["id"]) == 0 for i in by_content["items"]) >= 4
    assert cold["strategy"] == "collaborative" and sum(community(i["id"]) == 0 for i in cold["items"]) >= 4
