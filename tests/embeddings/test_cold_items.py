"""The content → collaborative map that places new items in the collaborative space."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from embeddings.cold_items import (
    Judges,
    _earned,
    content_map_fit,
    map_bytes,
    map_load,
    mapped_vectors,
    shrinkage_choose,
    stored_map_fit,
)
from embeddings.evaluation import Split

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


def test_map_recovers_a_linear_relation_and_places_unseen_items_near_their_true_vectors() -> None:
    # Given collaborative vectors that are a noisy linear function of the content vectors
    rng = np.random.default_rng(0)
    content = rng.normal(size=(600, 32)).astype(np.float32)
    truth = rng.normal(size=(32, 16))
    collaborative = (content @ truth + 0.05 * rng.normal(size=(600, 16))).astype(np.float32)

    # When the map is learnt on 500 items and applied to the other 100
    content_map = content_map_fit(content[:500], collaborative[:500])
    predicted = content_map.predict(content[500:])

    # Then the held-out items land close to where the model would have put them
    assert content_map.r2 > 0.95
    cosine = (predicted * collaborative[500:]).sum(1) / (
        np.linalg.norm(predicted, axis=1) * np.linalg.norm(collaborative[500:], axis=1)
    )
    assert np.median(cosine) > 0.98
    assert predicted.dtype == np.float32 and predicted.shape == (100, 16)


def test_map_of_unrelated_vectors_shrinks_towards_the_mean() -> None:
    rng = np.random.default_rng(1)
    content = rng.normal(size=(300, 20)).astype(np.float32)
    collaborative = (rng.normal(size=(300, 8)) + 3.0).astype(np.float32)

    content_map = content_map_fit(content, collaborative)

    # a strong penalty is chosen: predictions sit near the mean item instead of fitting noise
    predicted = content_map.predict(rng.normal(size=(50, 20)).astype(np.float32))
    assert content_map.r2 < 0.1
    assert np.abs(predicted.mean(axis=0) - 3.0).max() < 0.5
    assert predicted.std(axis=0).max() < 0.5


def test_map_needs_enough_items() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        content_map_fit(np.zeros((5, 3), np.float32), np.zeros((5, 2), np.float32))


def test_the_stored_map_places_both_columns_of_an_ease_table_and_survives_storage():
    rng = np.random.default_rng(5)
    content = rng.normal(size=(200, 12)).astype(np.float32)
    embedding = (content @ rng.normal(size=(12, 4))).astype(np.float32)
    fold_in = (content @ rng.normal(size=(12, 4))).astype(np.float32)

    stored = map_load(map_bytes(stored_map_fit(content, embedding, fold_in)))
    placed, placed_fold_in = mapped_vectors(stored, content[:5])

    assert placed.shape == (5, 4) and placed_fold_in is not None and placed_fold_in.shape == (5, 4)
    assert placed == pytest.approx(embedding[:5], abs=0.05)
    assert placed_fold_in == pytest.approx(fold_in[:5], abs=0.05)
    assert mapped_vectors(stored_map_fit(content, embedding, None), content[:2])[1] is None


def _read_and_unread_coordinates(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items whose first coordinate (the one users score) follows three of 60 content dimensions,
    beside eight large coordinates unrelated to content that no user reads."""
    content = rng.normal(size=(n, 60)).astype(np.float32)
    signal = content[:, :3] @ np.array([1.0, -1.0, 0.5])
    items = np.column_stack([0.3 * signal, 5.0 * rng.normal(size=(n, 8))]).astype(np.float32)
    return content, items, signal


def test_judges_choose_the_penalty_that_ranks_held_out_items_best() -> None:
    # Given items whose read coordinate is a function of content, hidden under unread noise
    rng = np.random.default_rng(3)
    content, items, signal = _read_and_unread_coordinates(rng, 400)
    users = np.zeros((300, 9), np.float32)
    users[:, 0] = 1 + rng.random(300)
    liked = np.zeros((300, 400), np.float32)
    for user in range(300):  # each liked the 8 items of highest signal among 80 it came across
        pool = rng.choice(400, 80, replace=False)
        liked[user, pool[np.argsort(-signal[pool])[:8]]] = 1

    # When one map is chosen by squared error and one by the users' rankings of held-out items
    by_error = content_map_fit(content, items, seed=1)
    judged = content_map_fit(content, items, judges=Judges(users, sp.csr_matrix(liked)), seed=1)

    # Then squared error, spent on the unread noise, shrinks the map hard and blurs what users read;
    # the judged map keeps it, on items neither map has seen
    fresh = rng.normal(size=(500, 60)).astype(np.float32)
    truth = fresh[:, :3] @ np.array([1.0, -1.0, 0.5])
    agreement = {
        name: np.corrcoef(m.predict(fresh)[:, 0], truth)[0, 1] for name, m in [("error", by_error), ("judged", judged)]
    }
    assert judged.penalty < by_error.penalty
    assert agreement["judged"] > 0.98 > 0.96 > agreement["error"]
    assert by_error.ndcg is None and judged.ndcg is not None and 0.5 < judged.ndcg <= 1.0


def test_judges_who_liked_no_held_out_item_leave_the_choice_to_squared_error() -> None:
    rng = np.random.default_rng(4)
    content, items, _ = _read_and_unread_coordinates(rng, 200)
    nobody = Judges(np.ones((5, 9), np.float32), sp.csr_matrix((5, 200), dtype=np.float32))

    judged = content_map_fit(content, items, judges=nobody, seed=1)

    assert judged.ndcg is None and judged.penalty == content_map_fit(content, items, seed=1).penalty


def test_a_stored_map_keeps_its_judges_score_and_maps_stored_before_it_still_load() -> None:
    rng = np.random.default_rng(6)
    content = rng.normal(size=(100, 6)).astype(np.float32)
    embedding = (content @ rng.normal(size=(6, 3))).astype(np.float32)
    users = rng.normal(size=(20, 3)).astype(np.float32)
    liked = sp.csr_matrix((rng.random((20, 100)) < 0.2).astype(np.float32))
    stored = stored_map_fit(content, embedding, None, judges=Judges(users, liked))

    assert map_load(map_bytes(stored)).content_map.ndcg == pytest.approx(stored.content_map.ndcg)
    m = stored.content_map
    old = io.BytesIO()  # the format before judges: no ndcg entry
    np.savez(old, weights=m.weights, penalty=m.penalty, r2=m.r2, dimensions=stored.dimensions)
    assert map_load(old.getvalue()).content_map.ndcg is None


def _catalogue_with_cold_items(rng: np.random.Generator, *, cold_liked: bool) -> tuple:
    """300 users who each liked 5 of 200 warm items in train and, held out, the best warm item they
    had not liked; 40 further items had no train interaction, and their content predicts their
    vector. With ``cold_liked`` every user also liked the cold item their vector scores highest;
    else only every tenth user liked a cold item, one at random, and the cold items' vectors sit
    where every user scores them above the warm items."""
    n_users, warm, cold, d = 300, 200, 40, 6
    items = rng.normal(size=(warm + cold, d)).astype(np.float32)
    users = rng.normal(size=(n_users, d)).astype(np.float32)
    if not cold_liked:
        direction = users.mean(axis=0) / np.linalg.norm(users.mean(axis=0))
        items[warm:] = 4.0 * direction + 0.1 * items[warm:]
    content = np.hstack([items, 0.01 * rng.normal(size=(warm + cold, 4))]).astype(np.float32)
    scores = users @ items.T
    train, test = np.zeros((n_users, warm + cold), np.float32), np.zeros((n_users, warm + cold), np.float32)
    for u in range(n_users):
        ranked = np.argsort(-scores[u, :warm])
        train[u, ranked[1:6]] = 1
        test[u, ranked[0]] = 1
        if cold_liked:
            test[u, warm + int(np.argmax(scores[u, warm:]))] = 1
        elif u % 10 == 0:
            test[u, warm + int(rng.integers(cold))] = 1
    return Split(sp.csr_matrix(train), sp.csr_matrix(test)), users, items, content


@pytest.mark.parametrize(("cold_liked", "expected"), [(True, 1.0), (False, 0.1)])
def test_shrinkage_is_the_factor_under_which_users_rank_the_whole_catalogue_best(cold_liked, expected):
    # Given a model with no interactions of (at least) 40 items, whose content predicts their vectors
    split, users, items, content = _catalogue_with_cold_items(np.random.default_rng(7), cold_liked=cold_liked)

    # When the factor on their mapped scores is chosen on the held-out interactions
    choice = shrinkage_choose(split, users, items, None, content, np.arange(len(items)), seed=1)

    # Then full scores win where users later like the cold items their vectors agree with, and the
    # smallest factor where placed items would push out the warm items users liked
    assert choice.shrinkage == expected
    assert choice.cold_items >= 40 and choice.cold_test_entries >= 30
    assert choice.ndcg is not None and choice.ndcg[choice.shrinkage] == pytest.approx(max(choice.ndcg.values()))
    assert choice.ndcg[choice.shrinkage] > min(choice.ndcg.values()) + 0.05


def test_without_a_cold_item_in_the_held_out_interactions_the_factor_stays_the_smallest():
    split, users, items, content = _catalogue_with_cold_items(np.random.default_rng(8), cold_liked=False)
    split = Split(split.train, sp.csr_matrix(split.test.shape, dtype=np.float32))  # nobody liked a cold item
    choice = shrinkage_choose(split, users, items, None, content, np.arange(len(items)))
    assert choice.shrinkage == 0.1 and choice.ndcg is None  # a larger one is never earned (was 1.0)


def test_the_shrinkage_scales_what_users_score_and_is_stored_with_the_map():
    rng = np.random.default_rng(9)
    content = rng.normal(size=(100, 6)).astype(np.float32)
    embedding = (content @ rng.normal(size=(6, 3))).astype(np.float32)
    fold_in = (content @ rng.normal(size=(6, 3))).astype(np.float32)
    full = stored_map_fit(content, embedding, fold_in)
    shrunk = map_load(map_bytes(replace(full, shrinkage=0.25)))

    placed, placed_fold_in = mapped_vectors(shrunk, content[:4])
    full_placed, full_fold_in = mapped_vectors(full, content[:4])
    assert shrunk.shrinkage == 0.25
    assert placed == pytest.approx(0.25 * full_placed, rel=1e-5)
    assert placed_fold_in == pytest.approx(full_fold_in)  # a user's fold-in reads it as predicted
    old = io.BytesIO()  # the format before the shrinkage: placed at full scale
    m = full.content_map
    np.savez(old, weights=m.weights, penalty=m.penalty, r2=m.r2, ndcg=np.nan, dimensions=full.dimensions)
    assert map_load(old.getvalue()).shrinkage == 1.0


def test_a_larger_factor_must_beat_the_chosen_one_by_more_than_the_noise_of_the_users():
    rng = np.random.default_rng(10)
    base = rng.random(400)
    noise = [0.05 * rng.normal(size=400) for _ in range(2)]  # the per-user spread of each factor's change

    # a gain far inside the spread of the paired differences is not earned; a clear one is
    assert _earned({0.1: base, 0.5: base + noise[0] + 0.001, 1.0: base + noise[1] - 0.001}) == 0.1
    assert _earned({0.1: base, 0.5: base + noise[0] + 0.02, 1.0: base + noise[1] + 0.021}) == 0.5
    assert _earned({0.1: base, 0.5: base + noise[0] + 0.02, 1.0: base + noise[1] + 0.05}) == 1.0
