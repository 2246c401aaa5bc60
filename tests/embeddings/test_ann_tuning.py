"""Each version's HNSW ef_search, chosen when it is trained (embeddings/ann_tuning.py)."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from embeddings import services
from embeddings.ann_tuning import (
    EF_SEARCH_LADDER,
    _ExactAnswers,
    ef_search_choose,
    smallest_reaching,
    version_ef_search_tune,
)
from embeddings.learners import LearnerParams
from embeddings.models import ModelVersion
from embeddings.recommendations import user_recommendations_list
from embeddings.selectors import active_version_serving_forget
from embeddings.vectors import tables
from embeddings.vectors.search import (
    ef_search_first,
    ef_search_iterative,
    index_search_ids,
    iterative_scans_available,
)
from recsys.models import Item


@pytest.mark.unit
@pytest.mark.parametrize("top_first", [False, True])
@pytest.mark.parametrize("first_passing", range(len(EF_SEARCH_LADDER)))
def test_the_smallest_rung_that_reaches_the_target_is_found_in_few_measurements(first_passing, top_first):
    measured = []

    def measure(ef: int) -> float:
        measured.append(ef)
        return 0.995 if ef >= EF_SEARCH_LADDER[first_passing] else 0.9

    value, recalls = smallest_reaching(EF_SEARCH_LADDER, measure, 0.99, top_first=top_first)

    assert value == EF_SEARCH_LADDER[first_passing]
    assert recalls[value] == 0.995
    # a binary search over 15 rungs, not a walk along them (after the top, when measured from it)
    assert len(measured) <= 5 + top_first
    assert len(set(measured)) == len(measured)
    assert not top_first or measured[0] == EF_SEARCH_LADDER[-1]


@pytest.mark.unit
def test_measured_from_the_top_a_target_missed_there_costs_one_measurement():
    measured = []

    def measure(ef: int) -> float:
        measured.append(ef)
        return 0.2

    assert smallest_reaching(EF_SEARCH_LADDER, measure, 0.99, top_first=True) == (400, {400: 0.2})
    assert measured == [400]


@pytest.mark.unit
def test_no_rung_reaching_the_target_gives_the_largest():
    value, recalls = smallest_reaching(EF_SEARCH_LADDER, lambda ef: ef / 1000, 0.99)

    assert value == EF_SEARCH_LADDER[-1]
    assert recalls[value] == EF_SEARCH_LADDER[-1] / 1000


@pytest.mark.unit
def test_recall_counts_a_tie_at_the_boundary_as_right_and_a_worse_item_as_a_miss():
    items = np.array([[3.0], [2.0], [2.0], [1.0]] + [[0.5]] * 20, np.float32)
    ids = np.arange(100, 124)
    exact = _ExactAnswers(ids, items, np.array([[1.0]], np.float32), k=3)  # 3.0 and both tied 2.0s

    assert exact.recall([np.array([100, 102, 101])]) == 1.0
    assert exact.recall([np.array([100, 101, 102])]) == 1.0
    assert exact.recall([np.array([100, 101, 103])]) == pytest.approx(2 / 3)
    assert exact.recall([np.array([100, 101])]) == pytest.approx(2 / 3)  # a short answer misses too


@pytest.mark.unit
def test_exact_answers_scored_in_chunks_equal_the_whole_matrix_and_leave_a_query_s_own_item_out(monkeypatch):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((1000, 8)).astype(np.float32)
    ids = np.arange(5000, 6000)
    queries = items[[4, 500, 999]]
    whole = _ExactAnswers(ids, items, queries, skip=[ids[[4]], ids[[500]], ids[[999]]])
    monkeypatch.setattr(_ExactAnswers, "CHUNK", 97)
    chunked = _ExactAnswers(ids, items, queries, skip=[ids[[4]], ids[[500]], ids[[999]]])

    np.testing.assert_allclose(chunked.threshold, whole.threshold)
    scores = queries @ items.T
    scores[[0, 1, 2], [4, 500, 999]] = -np.inf
    best = [ids[np.argsort(-row)[:10]] for row in scores]
    assert chunked.recall(best) == 1.0
    with_worst = [
        np.concatenate([b[:9], [ids[np.argmin(np.where(np.isinf(row), np.inf, row))]]])
        for b, row in zip(best, scores, strict=True)
    ]
    assert chunked.recall(with_worst) == pytest.approx(0.9)


@pytest.mark.unit
def test_a_tuned_ef_search_is_raised_to_a_deeper_limit_only_up_to_the_setting(settings):
    settings.RECSYS_HNSW_EF_SEARCH = 64

    assert ef_search_iterative(10, None) == 64
    assert ef_search_iterative(10, 24) == 24
    assert ef_search_iterative(50, 24) == 50  # the ranking stage's depth keeps its breadth
    assert ef_search_iterative(200, 24) == 64
    assert ef_search_iterative(10, 160) == 160  # vectors that need more get more


@pytest.mark.unit
def test_on_pgvector_before_0_8_a_tuned_ef_search_only_ever_widens_the_first_search(settings):
    # Filters apply after the index there: a narrower start returns fewer rows or searches again.
    settings.RECSYS_HNSW_EF_SEARCH = 64

    assert ef_search_first(10, 1, 24) == ef_search_first(10, 1, None) == 64
    assert ef_search_first(10, 4, 24) == 64
    assert ef_search_first(50, 1, 24) == 64  # the ranking stage's candidates
    assert ef_search_first(30, 4, 24) == ef_search_first(30, 4, None) == 256
    assert ef_search_first(10, 1, 160) == 160  # vectors that need more get more


@pytest.fixture
def random_table(db):
    """2,000 items of random 32-d vectors in a version's item table with its HNSW index: vectors
    without structure, which the index needs a wide search for."""
    rng = np.random.default_rng(7)
    Item.objects.bulk_create(Item(external_id=f"r{n}") for n in range(2000))
    ids = np.array(sorted(Item.objects.values_list("id", flat=True)), np.int64)
    vectors = rng.standard_normal((len(ids), 32)).astype(np.float32)
    tables.tables_create(990001, 32)
    tables.vectors_copy(990001, "item", ids, vectors)
    tables.index_build(990001, "item")
    yield tables.item_table(990001), ids, vectors, rng.standard_normal((100, 32)).astype(np.float32)
    tables.tables_drop(990001)


def test_the_choice_reaches_the_target_on_the_table_itself(random_table):
    table, ids, vectors, queries = random_table

    loose = ef_search_choose(
        table=table, vector_type="vector", item_ids=ids, item_vectors=vectors, queries=queries, target=0.3
    )
    strict = ef_search_choose(
        table=table, vector_type="vector", item_ids=ids, item_vectors=vectors, queries=queries, target=0.99
    )

    assert loose.ef_search == EF_SEARCH_LADDER[0]
    if iterative_scans_available():  # before 0.8 a rung is measured at the served breadth (>= the setting's)
        assert strict.ef_search > EF_SEARCH_LADDER[0]  # random 32-d vectors: the narrowest search misses
    assert strict.recall >= 0.99 or strict.ef_search == EF_SEARCH_LADDER[-1]
    smaller = [ef for ef in strict.measured if ef < strict.ef_search]
    assert all(strict.measured[ef] < 0.99 for ef in smaller)


@pytest.fixture
def trained(communities, settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    params = LearnerParams(algorithm="als", factors=8, iterations=10, regularization=0.05)
    return services.collaborative_model_train(version_id=services.collaborative_version_create(params=params).pk)


def test_a_trained_version_records_its_ef_search_and_serving_uses_it(trained):
    assert trained.ef_search in EF_SEARCH_LADDER
    assert trained.metrics["ann_recall@10"] >= 0.99
    assert "ann" in trained.timings
    # Wider than the setting: every pgvector; narrower: only where iterative scans make it safe.
    for tuned, served in ((160, "160"), (24, "24" if iterative_scans_available() else "64")):
        ModelVersion.objects.filter(pk=trained.pk).update(ef_search=tuned)
        active_version_serving_forget()

        user_recommendations_list(user_external_id="u3", limit=5)

        assert getattr(connection.connection, "_recsys_settings", {}).get("hnsw.ef_search") == served


def test_tuning_off_serves_the_setting_even_for_a_tuned_version(trained, settings):
    assert trained.served_ef_search == trained.ef_search
    settings.RECSYS_HNSW_TARGET_RECALL = 0

    assert trained.ef_search is not None and trained.served_ef_search is None


def test_all_zero_query_vectors_leave_the_version_untuned(trained):
    trained.ef_search, trained.metrics = None, {}
    version_ef_search_tune(
        trained,
        item_ids=np.array([1, 2], np.int64),
        item_vectors=np.ones((2, 8), np.float32),
        query_vectors=np.zeros((5, 8), np.float32),
        seed=0,
    )

    assert trained.ef_search is None and "ann_recall@10" not in trained.metrics


def test_tuning_off_keeps_the_setting(communities, settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_HNSW_TARGET_RECALL = 0
    params = LearnerParams(algorithm="als", factors=8, iterations=10, regularization=0.05)
    version = services.collaborative_model_train(version_id=services.collaborative_version_create(params=params).pk)

    assert version.ef_search is None
    assert "ann_recall@10" not in version.metrics


@pytest.mark.unit
def test_exact_answers_leave_out_each_query_s_skipped_items():
    # a user's seen items fill the top of their raw answer; the served top 10 is the next 10
    rng = np.random.default_rng(11)
    items = rng.standard_normal((500, 8)).astype(np.float32)
    ids = np.arange(100, 600)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    ranked = [ids[np.argsort(-(items @ q))] for q in queries]
    exact = _ExactAnswers(ids, items, queries, skip=[r[:5] for r in ranked])

    assert exact.recall([r[5:15] for r in ranked]) == 1.0
    assert exact.recall([r[6:16] for r in ranked]) == pytest.approx(0.9)  # the 16th is not in the served 10


@pytest.mark.unit
def test_before_pgvector_0_8_each_rung_is_measured_as_served_and_widened_queries_are_not_counted(monkeypatch, settings):
    # The served search starts at the setting's breadth at least, and the index drops skipped
    # items after it answers: a query left with fewer than 10 is widened when served.
    settings.RECSYS_HNSW_EF_SEARCH = 64
    rng = np.random.default_rng(12)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    ids = np.arange(300)
    queries = rng.standard_normal((2, 8)).astype(np.float32)
    best = [ids[np.argsort(-(items @ q))][:10] for q in queries]
    worst = ids[np.argsort(items @ queries[1])][:10]
    monkeypatch.setattr("embeddings.ann_tuning.iterative_scans_available", lambda: False)
    asked: list[int] = []

    def index(table, queries, *, vector_type, limit, ef_search, skip):
        asked.append(ef_search)
        # the first query is short below 256; the second is answered exactly from 128, wrongly below
        return [best[0] if ef_search >= 256 else best[0][:3], best[1] if ef_search >= 128 else worst]

    monkeypatch.setattr("embeddings.ann_tuning.index_search_ids", index)
    choice = ef_search_choose(
        table="t", vector_type="vector", item_ids=ids, item_vectors=items, queries=queries, target=0.99, skip=[]
    )

    assert min(asked) >= 64  # a rung below the setting is served at the setting's breadth
    assert choice.ef_search == 128 and choice.measured[128] == 1.0  # judged on the second query alone
    assert all(choice.measured[ef] == 0.0 for ef in choice.measured if ef < 128)


@pytest.mark.unit
def test_users_who_have_seen_all_but_a_few_items_are_not_asked_for_a_top_10(monkeypatch):
    from types import SimpleNamespace

    import scipy.sparse as sp

    asked = {}

    def choose(**kwargs):
        asked.update(kwargs)
        return SimpleNamespace(ef_search=40, recall=0.999)

    monkeypatch.setattr("embeddings.ann_tuning.ef_search_choose", choose)
    seen = sp.csr_matrix(np.array([[1] * 15 + [0] * 5, [1, 1] + [0] * 18, [1] * 11 + [0] * 9], np.float32))
    version = SimpleNamespace(item_table="t", vector_type="vector", ef_search=None, metrics={})

    version_ef_search_tune(
        version,
        item_ids=np.arange(100, 120),
        item_vectors=np.ones((20, 4), np.float32),
        query_vectors=np.ones((3, 4), np.float32),
        seed=0,
        seen=seen,
    )

    assert [list(s) for s in asked["skip"]] == [[100, 101]]  # 15 and 11 of 20 seen leave no top 10
    assert len(asked["queries"]) == 1 and version.ef_search == 40


def test_the_index_search_skips_each_query_s_items_as_the_served_search_does(random_table):
    table, ids, vectors, queries = random_table
    top = [ids[np.argsort(-(vectors @ q))][:20] for q in queries[:20]]

    found = index_search_ids(table, queries[:20], vector_type="vector", limit=10, ef_search=400, skip=top)
    choice = ef_search_choose(
        table=table,
        vector_type="vector",
        item_ids=ids,
        item_vectors=vectors,
        queries=queries[:20],
        target=0.95,
        skip=top,
    )

    assert all(len(f) == 10 and not set(f) & set(t) for f, t in zip(found, top, strict=True))
    assert choice.recall >= 0.95 or choice.ef_search == EF_SEARCH_LADDER[-1]
