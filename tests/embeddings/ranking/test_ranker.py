"""The ranking stage's pure parts: candidate merging, features, the ranker and its judgement."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.sparse as sp

from embeddings.evaluation import Split
from embeddings.ranking.features import CandidateFacts, category_affinity, feature_names, features_build
from embeddings.ranking.offline import (
    ItemFacts,
    OfflineContext,
    RankingState,
    StateOutdated,
    ranking_stage_train,
    ranking_state_build,
)
from embeddings.ranking.ranker import Group, mean_ndcg, ranker_fit, ranker_load
from embeddings.ranking.serving import facts_from_rows
from embeddings.ranking.sources import (
    MISSING_RANK,
    SOURCES,
    CategoryIndex,
    candidates_merge,
    category_index_build,
    cooccurrence_neighbours,
    cooccurrence_scores,
    members,
    top_scores,
)

pytestmark = pytest.mark.unit


def test_merged_candidates_carry_each_sources_score_and_rank_with_a_sentinel_when_missing():
    found = {
        "collaborative": (np.array([7, 3]), np.array([0.9, 0.5], np.float32)),
        "popular": (np.array([3, 11]), np.array([2.0, 5.0], np.float32)),
    }

    merged = candidates_merge(found)

    assert merged.items.tolist() == [7, 3, 11]
    c, p = SOURCES.index("collaborative"), SOURCES.index("popular")
    assert merged.ranks[:, c].tolist() == [1, 2, MISSING_RANK]
    assert merged.ranks[:, p].tolist() == [MISSING_RANK, 2, 1]  # popular ranks by its own score
    assert np.isnan(merged.scores[2, c]) and merged.scores[2, p] == 5.0


def test_top_scores_skips_excluded_items():
    items, scores = top_scores(np.array([0.1, 0.9, 0.5, 0.7]), 2, excluded=np.array([1]))

    assert items.tolist() == [3, 2] and scores.tolist() == pytest.approx([0.7, 0.5])


def test_cooccurrence_finds_items_liked_by_the_same_users():
    matrix = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]], np.float32))

    neighbours = cooccurrence_neighbours(matrix, k=2)
    items, _ = cooccurrence_scores(neighbours, np.array([1]))

    assert items[0] == 0  # item 1 co-occurs with item 0 for two users
    assert 1 not in neighbours[1].indices  # never its own neighbour


def test_features_line_up_with_their_names():
    merged = candidates_merge({"collaborative": (np.array([1, 2]), np.array([0.3, 0.2], np.float32))})
    n = len(merged)
    facts = CandidateFacts(*(np.arange(n, dtype=np.float32) for _ in range(6)), attributes=np.ones((n, 1), np.float32))

    features = features_build(merged, facts, activity=9.0, recency_days=2.0)

    names = feature_names(["price"])
    assert features.shape == (2, len(names))
    assert features[:, names.index("user_recency_days")].tolist() == [2.0, 2.0]
    assert features[:, names.index("user_activity")][0] == pytest.approx(np.log1p(9.0))
    assert features[:, names.index("attribute_price")].tolist() == [1.0, 1.0]


def planted_groups(n_users: int, seed: int) -> list[Group]:
    """Candidates whose relevance follows feature 2 (a noisy signal); feature 0 is a source's rank
    that knows nothing."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_users):
        n = 60
        signal = rng.normal(size=n)
        labels = (signal + 0.3 * rng.normal(size=n) > 1.5).astype(np.float32)
        features = np.column_stack([rng.permutation(n) + 1.0, rng.normal(size=n), signal]).astype(np.float32)
        groups.append(Group(features, labels, max(int(labels.sum()), 1)))
    return groups


def test_the_ranker_learns_the_feature_that_decides_relevance():
    names = ["source_rank", "noise", "signal"]
    fit, judged = planted_groups(300, seed=1), planted_groups(100, seed=2)

    ranker = ranker_fit(fit, names)

    assert ranker is not None
    ranked = mean_ndcg(judged, lambda g: ranker.predict(g.features))
    by_source = mean_ndcg(judged, lambda g: -g.features[:, 0])
    assert ranked > by_source + 0.3
    assert max(ranker.importances(), key=ranker.importances().get) == "signal"


def test_contributions_explain_the_score_and_survive_a_reload():
    names = ["source_rank", "noise", "signal"]
    ranker = ranker_fit(planted_groups(200, seed=3), names)
    rows = planted_groups(1, seed=4)[0].features

    contributions = ranker.contributions(rows)
    reloaded = ranker_load(ranker.model_text(), names)

    assert contributions.shape == (len(rows), len(names) + 1)
    assert contributions.sum(axis=1) == pytest.approx(ranker.predict(rows), abs=1e-6)
    assert reloaded.predict(rows) == pytest.approx(ranker.predict(rows))
    top = np.abs(contributions[:, :-1]).mean(axis=0).argmax()
    assert names[top] == "signal"


def oracle_context(n_users: int = 120, n_items: int = 80, seed: int = 0) -> OfflineContext:
    """Users with random train items; the collaborative source scores each user's test items
    highest (an oracle), so nothing can beat it."""
    rng = np.random.default_rng(seed)
    train = sp.lil_matrix((n_users, n_items), dtype=np.float32)
    test = sp.lil_matrix((n_users, n_items), dtype=np.float32)
    for user in range(n_users):
        items = rng.choice(n_items, 12, replace=False)
        for item in items[:9]:
            train[user, item] = 1.0
        for item in items[9:]:
            test[user, item] = 1.0
    split = Split(train.tocsr(), test.tocsr())
    oracle = split.test.toarray() + 0.01 * rng.random((n_users, n_items))
    items = ItemFacts(
        rng.random(n_items).astype(np.float32) * 100,
        [[f"c{i % 4}"] for i in range(n_items)],
        np.zeros((n_items, 0), np.float32),
        None,
    )
    state = ranking_state_build(split.train, None, np.arange(n_items), reference=0.0)
    return OfflineContext(split, None, lambda u: oracle[u].astype(np.float32), state, items, 0.0, 30.0, 40)


def test_the_stage_is_off_when_it_does_not_beat_the_best_source():
    outcome = ranking_stage_train(oracle_context(), attributes=[], max_users=500)

    report = outcome.report
    assert report["best_source"] == "collaborative" and report["best_source_ndcg@10"] > 0.95
    assert report["ndcg@10"] <= report["best_source_ndcg@10"]
    assert not outcome.wins and report["used"] is False
    assert report["recall@depth"]["collaborative"] == 1.0


def dense_neighbours(matrix: sp.csr_matrix, k: int) -> list[dict[int, float]]:
    """The reference: every pair's cosine of binary user columns, each item's k best (self excluded)."""
    binary = (matrix.toarray() > 0).astype(np.float64)
    norms = np.sqrt(np.maximum(binary.sum(axis=0), 1.0))
    cosine = (binary.T @ binary) / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    best = []
    for row in cosine:
        order = sorted(np.flatnonzero(row > 0), key=lambda j: (-row[j], j))[:k]
        best.append({int(j): float(row[j]) for j in order})
    return best


@pytest.mark.parametrize("block", [1, 37, 1e9])  # one item per block, a few blocks, one block
def test_sparse_cooccurrence_keeps_the_same_neighbours_as_the_dense_reference(block):
    rng = np.random.default_rng(5)
    matrix = sp.random(60, 40, density=0.15, format="csr", random_state=rng, dtype=np.float32)
    matrix.data = rng.choice([-1.0, 1.0, 3.0], size=matrix.nnz).astype(np.float32)  # negatives do not count

    neighbours = cooccurrence_neighbours(matrix, k=5, block=block)

    for item, expected in enumerate(dense_neighbours(matrix, 5)):
        row = neighbours[item]
        assert dict(zip(row.indices.tolist(), row.data.tolist(), strict=True)) == pytest.approx(expected)


def category_index() -> CategoryIndex:
    # State items 0..3 (rows); the catalogue's newest items per category include item 99, which has
    # no interactions (not a state row).
    return category_index_build(
        [["drama"], ["drama", "comedy"], ["news"], []],
        [
            ("comedy", 99, 5_000.0),
            ("comedy", 1, 1_000.0),
            ("drama", 99, 5_000.0),
            ("drama", 7, 4_000.0),
            ("drama", 0, 2_000.0),
            ("news", 2, 3_000.0),
        ],
    )


def test_category_index_ranks_the_users_categories_and_reads_their_newest_items():
    index = category_index()

    shares = index.shares(np.array([0, 1]), total=4)
    favourites = index.favourites(shares, n=2)
    items, scores = index.newest(favourites, excluded=np.array([7]), depth=2, now=5_000.0 + 86_400.0)

    assert dict(zip(index.names.tolist(), shares.tolist(), strict=True)) == {"comedy": 0.25, "drama": 0.5, "news": 0.0}
    assert index.names[favourites].tolist() == ["drama", "comedy"]
    assert items.tolist() == [99, 0, 1]  # drama's two newest but the excluded 7, then comedy's new one
    assert scores[0] == pytest.approx(0.5)  # one day old


def test_ties_between_categories_go_to_the_first_name():
    index = category_index()

    favourites = index.favourites(index.shares(np.array([1, 2]), total=2), n=3)

    assert index.names[favourites].tolist() == ["comedy", "drama", "news"]


def test_the_state_round_trips_with_its_categories_and_an_older_state_is_refused():
    state = ranking_state_build(
        sp.csr_matrix(np.eye(4, dtype=np.float32)),
        None,
        np.array([3, 5, 8, 13]),
        reference=0.0,
        categories=category_index(),
    )

    loaded = RankingState.from_bytes(state.to_bytes())

    assert loaded.item_ids.tolist() == [3, 5, 8, 13]
    assert loaded.rows_of(np.array([5, 6, 13])).tolist() == [1, -1, 3]
    assert loaded.categories.names.tolist() == ["comedy", "drama", "news"]
    assert (loaded.categories.of_items != state.categories.of_items).nnz == 0
    assert loaded.categories.newest_ids.tolist() == state.categories.newest_ids.tolist()
    old = io.BytesIO()
    np.savez(old, item_ids=state.item_ids)  # what a run before the format key stored
    with pytest.raises(StateOutdated):
        RankingState.from_bytes(old.getvalue())


def test_category_affinity_is_each_candidates_largest_share_and_zero_without_one():
    shares = {"drama": 0.5, "comedy": 0.25}

    affinity = category_affinity([["news", "comedy"], [], ["drama", "comedy", "drama"], ["news"], ["comedy"]], shares)

    assert affinity.dtype == np.float32
    assert affinity.tolist() == [0.25, 0.0, 0.5, 0.0, 0.25]
    assert category_affinity([], shares).tolist() == [] and category_affinity([[], []], {}).tolist() == [0.0, 0.0]


def test_cooccurrence_scores_sum_the_recent_items_rows_best_first_ties_to_the_lower_item():
    rng = np.random.default_rng(8)
    neighbours = sp.random(50, 50, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    neighbours.data = rng.integers(1, 5, size=neighbours.nnz).astype(np.float32) / 4  # exact sums: real ties
    recent = np.array([3, 17, 17, 40, -1, 99])  # a row twice counts twice; rows outside are skipped

    items, scores = cooccurrence_scores(neighbours, recent)

    expected = np.asarray(neighbours[[3, 17, 17, 40]].sum(axis=0)).ravel()
    order = sorted(np.flatnonzero(expected), key=lambda j: (-expected[j], j))
    assert items.tolist() == order
    assert scores.tolist() == expected[order].tolist()
    weighted, _ = cooccurrence_scores(neighbours, np.array([3, 99, 17]), np.array([0.0, 5.0, 1.0], np.float32))
    assert set(weighted.tolist()) == set(np.flatnonzero(np.asarray(neighbours[[3, 17]].sum(axis=0)).ravel()))


def test_members_finds_ids_in_a_sorted_array():
    assert members(np.array([5, 1, 9, 7]), np.array([1, 7, 8])).tolist() == [False, True, False, True]
    assert members(np.array([5]), np.empty(0, np.int64)).tolist() == [False]


def test_serving_facts_follow_the_candidates_whatever_order_the_statement_answers_in():
    state = ranking_state_build(
        sp.csr_matrix(np.eye(4, dtype=np.float32)), None, np.array([3, 5, 8, 13]), reference=0.0
    )
    candidates = candidates_merge({"collaborative": (np.array([13, 40, 5, 3]), np.array([4, 3, 2, 1], np.float32))})
    rows = [  # (id, external id, categories, age days, attributes, model score, content similarity, until); 40 is hidden
        (3, "c", None, 3.0, {"price": 7}, 0.3, None, None),
        (13, "a", ["drama"], 1.0, None, 0.1, 0.5, 1_900_000_000.5),
        (5, "b", ["news", "comedy"], 2.0, {"price": "x"}, None, 0.7, None),
    ]

    kept, (external_ids, until), facts = facts_from_rows(
        state, ("price",), candidates, rows, {"comedy": 0.25, "drama": 0.5}
    )

    assert kept.items.tolist() == [13, 5, 3] and external_ids == ["a", "b", "c"]
    assert until == [1_900_000_000.5, None, None]
    assert kept.ranks[:, SOURCES.index("collaborative")].tolist() == [1, 3, 4]
    assert facts.age_days.tolist() == [1.0, 2.0, 3.0]
    assert facts.model_score.tolist()[::2] == pytest.approx([0.1, 0.3]) and np.isnan(facts.model_score[1])
    assert facts.content_similarity.tolist()[:2] == pytest.approx([0.5, 0.7]) and np.isnan(facts.content_similarity[2])
    assert facts.category_affinity.tolist() == [0.5, 0.25, 0.0]
    assert facts.popularity.tolist() == pytest.approx(state.popularity[[3, 1, 0]].tolist())
    assert np.isnan(facts.attributes[:2, 0]).all() and facts.attributes[2, 0] == 7.0


def test_attribute_features_read_numbers_past_floats_range_and_non_numbers_as_missing():
    from embeddings.ranking.features import numeric_attributes

    rows = [{"price": 10**400}, {"price": 2}, {"price": "3"}, {"price": True}, None]  # jsonb keeps any integer

    values = numeric_attributes(rows, ["price"])[:, 0]

    assert np.isnan(values[0]) and values[1] == 2.0 and np.isnan(values[2]) and values[3] == 1.0
    assert np.isnan(values[4])
