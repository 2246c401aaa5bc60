"""The content → collaborative map that places new items in the collaborative space."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.cold_items import content_map_fit, map_bytes, map_load, mapped_vectors, stored_map_fit

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
