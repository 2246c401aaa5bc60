"""Text encoders: the fake, TF-IDF+SVD, chunking helpers, item text, the cache, and the real MiniLM (marked)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from embeddings import encoders
from embeddings.encoders import (
    EncoderNotFitted,
    TextEncoder,
    chunks_average,
    encoder_cached,
    encoder_create,
    item_text,
    nonzero_rows,
    token_batches,
    token_windows,
)
from recsys.loaded_once import LoadedOnce

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)

CATALOG = [
    "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy. Tags: pixar, fun",
    "Toy Story 2 (1999). Genres: Adventure, Animation, Children, Comedy. Tags: pixar, sequel",
    "Finding Nemo (2003). Genres: Adventure, Animation, Children. Tags: pixar, ocean, fish",
    "Heat (1995). Genres: Action, Crime, Thriller. Tags: heist, los angeles",
    "The Godfather (1972). Genres: Crime, Drama. Tags: mafia, family",
    "Goodfellas (1990). Genres: Crime, Drama. Tags: mafia, gangster",
    "Alien (1979). Genres: Horror, Sci-Fi. Tags: space, monster",
    "Aliens (1986). Genres: Action, Horror, Sci-Fi. Tags: space, marines, monster",
    "Casablanca (1942). Genres: Drama, Romance. Tags: classic, war",
    "Notting Hill (1999). Genres: Comedy, Romance. Tags: london, bookshop",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_unit_rows(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---- fake ------------------------------------------------------------------------------------------


def test_fake_encoder_gives_the_same_vectors_in_every_instance():
    first = encoder_create(name="fake", dimensions=32).encode(["red apple pie", "blue sky"])
    again = encoder_create(name="fake", dimensions=32).encode(["red apple pie", "blue sky"])

    np.testing.assert_array_equal(first, again)
    assert first.shape == (2, 32)
    assert_unit_rows(first)


def test_fake_encoder_puts_texts_sharing_words_closer_than_unrelated_ones():
    apple_pie, apple_tart, rocket = encoder_create(name="fake").encode(
        ["warm apple pie with cream", "apple tart with cream", "rocket launch countdown"]
    )

    assert cosine(apple_pie, apple_tart) > cosine(apple_pie, rocket) + 0.3


def test_fake_encoder_gives_a_zero_row_to_text_without_words():
    vectors = encoder_create(name="fake").encode(["", "  ...  ", "words"])

    assert nonzero_rows(vectors).tolist() == [False, False, True]


def test_fake_encoder_satisfies_the_protocol_and_rebuilds_from_its_config():
    encoder = encoder_create(name="fake", dimensions=16)

    rebuilt = encoder_create(**encoder.config(), state=encoder.state())

    assert isinstance(encoder, TextEncoder)
    assert encoder.config() == {"name": "fake", "dimensions": 16} == rebuilt.config()
    assert encoder.state() == b""


# ---- tfidf-svd -----------------------------------------------------------------------------------


@pytest.fixture
def tfidf() -> TextEncoder:
    encoder = encoder_create(name="tfidf-svd", dimensions=6)
    encoder.fit(CATALOG)
    return encoder


def test_tfidf_svd_encodes_normalised_vectors_of_the_fitted_dimensions(tfidf):
    vectors = tfidf.encode(CATALOG)

    assert vectors.shape == (len(CATALOG), 6) and tfidf.dimensions == 6
    assert_unit_rows(vectors)


def test_tfidf_svd_puts_items_sharing_terms_together(tfidf):
    toy_story, toy_story_2, *_ = tfidf.encode(CATALOG)
    godfather = tfidf.encode([CATALOG[4]])[0]

    assert cosine(toy_story, toy_story_2) > cosine(toy_story, godfather)


def test_tfidf_svd_rebuilt_from_its_state_gives_identical_vectors_without_refitting(tfidf):
    texts = [*CATALOG, "a pixar monster"]

    rebuilt = encoder_create(**tfidf.config(), state=tfidf.state())

    np.testing.assert_array_equal(rebuilt.encode(texts), tfidf.encode(texts))
    assert rebuilt.dimensions == tfidf.dimensions and rebuilt.config() == tfidf.config()


def test_tfidf_svd_encodes_text_with_no_known_term_to_a_zero_row(tfidf):
    vectors = tfidf.encode(["zzyzx qwertyuiop", "", "pixar mafia"])

    assert nonzero_rows(vectors).tolist() == [False, False, True]
    assert not vectors[0].any()


def test_tfidf_svd_clamps_dimensions_to_what_the_catalog_allows():
    encoder = encoder_create(name="tfidf-svd")  # 256 wanted

    encoder.fit(CATALOG[:4])

    assert encoder.dimensions <= 4
    assert encoder.encode(CATALOG[:4]).shape == (4, encoder.dimensions)


def test_tfidf_svd_keeps_terms_of_one_text_when_a_tiny_catalog_shares_none():
    encoder = encoder_create(name="tfidf-svd", dimensions=2)

    encoder.fit(["comet tails", "tomato soup"])  # min_df=2 would leave no term

    assert encoder.dimensions == 2
    assert nonzero_rows(encoder.encode(["cold tomato soup"])).all()


def test_tfidf_svd_refuses_to_encode_before_fit():
    encoder = encoder_create(name="tfidf-svd")

    with pytest.raises(EncoderNotFitted):
        encoder.encode(["anything"])
    with pytest.raises(EncoderNotFitted):
        encoder.state()


def test_tfidf_svd_state_may_hold_fewer_dimensions_than_wanted_but_not_more(tfidf):
    clamped = encoder_create(name="tfidf-svd", dimensions=256, state=tfidf.state())

    assert clamped.dimensions == 6
    with pytest.raises(ValueError, match="6-d"):
        encoder_create(name="tfidf-svd", dimensions=4, state=tfidf.state())


def test_tfidf_svd_rejects_a_catalog_without_terms():
    with pytest.raises(ValueError, match="no terms"):
        encoder_create(name="tfidf-svd").fit(["", "!!"])


# ---- chunking helpers ---------------------------------------------------------------------------


def test_token_windows_cover_every_token_without_splitting_words():
    # words: 0 0 0 | 1 | 2 2 | 3 3 3 3 | 4
    word_ids = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4]

    spans = token_windows(word_ids, 5)

    assert spans == [(0, 4), (4, 6), (6, 11)]
    assert all(end - start <= 5 for start, end in spans)


def test_token_windows_cut_a_word_longer_than_the_window():
    assert token_windows([0, 0, 0, 0, 0, 1], 2) == [(0, 2), (2, 4), (4, 6)]
    assert token_windows([], 4) == []
    assert token_windows([0, 1, 2], 4) == [(0, 3)]


def test_chunk_vectors_are_averaged_by_length_and_normalised():
    # A fake model: chunk "a" points along x, chunk "b" along y.
    vectors = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)
    owners = np.array([0, 0, 2], dtype=np.int64)
    lengths = np.array([3, 1, 7], dtype=np.int64)

    averaged = chunks_average(vectors, owners, lengths, n_texts=3)

    np.testing.assert_allclose(averaged[0], np.array([3, 1]) / np.sqrt(10), rtol=1e-6)
    assert not averaged[1].any()  # a text without chunks gets no vector
    np.testing.assert_allclose(averaged[2], [0, 1])
    assert averaged.dtype == np.float32


def test_a_long_text_averaged_from_fake_model_chunks_stays_close_to_each_chunk():
    model = encoder_create(name="fake")
    chunks = ["pixar animation toys", "pixar animation fish", "pixar animation cars"]

    text_vector = chunks_average(model.encode(chunks), np.zeros(3, np.int64), np.array([10, 10, 1]), n_texts=1)[0]

    similarities = [cosine(text_vector, chunk) for chunk in model.encode(chunks)]
    assert similarities[0] > similarities[2] and similarities[1] > similarities[2] > 0.3


def test_token_batches_sort_by_length_and_stay_within_the_budget():
    lengths = [30, 5, 250, 6, 7, 40, 200]

    batches = token_batches(lengths, budget=80)

    flat = np.concatenate(batches).tolist()
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert all(len(b) * max(lengths[i] for i in b) <= 80 or len(b) == 1 for b in batches)
    assert [len(b) for b in batches] == [3, 2, 1, 1]


# ---- item text ---------------------------------------------------------------------------------------


def test_item_text_joins_the_chosen_fields_in_order():
    parts = {"title": "Heat", "text": "A heist in LA.", "categories": ["Crime", "Thriller"]}

    assert item_text(**parts) == "Heat. A heist in LA.. Crime, Thriller"
    assert item_text(**parts, fields=["categories", "title"]) == "Crime, Thriller. Heat"
    assert item_text(**parts, fields=["text"]) == "A heist in LA."


def test_item_text_leaves_out_a_title_and_categories_the_text_already_names():
    text = "Toy Story (1995). Genres: Adventure, Animation"

    joined = item_text(title="Toy Story (1995)", text=text, categories=["Adventure", "Animation", "Kids", "Kids"])

    assert joined == f"{text}. Kids"


def test_item_text_matches_named_categories_as_whole_words_only():
    assert item_text(title="", text="A melodramatic tale", categories=["Drama"]) == "A melodramatic tale. Drama"


def test_item_text_is_empty_when_no_chosen_field_has_text():
    assert item_text(title="  ", text="\n", categories=["", " "]) == ""
    assert item_text(title="Heat", text="", categories=[], fields=["text", "categories"]) == ""


def test_item_text_rejects_unknown_fields():
    with pytest.raises(ValueError, match="description"):
        item_text(title="Heat", text="", categories=[], fields=["title", "description"])


# ---- cache -------------------------------------------------------------------------------------------


def test_encoder_cached_builds_each_encoder_once_even_when_threads_race(monkeypatch):
    monkeypatch.setattr(encoders, "_cache", LoadedOnce())
    created = []

    def slow_create(**kwargs):
        time.sleep(0.05)
        created.append(kwargs)
        return encoders.FakeEncoder(dimensions=kwargs["dimensions"])

    monkeypatch.setattr(encoders, "encoder_create", slow_create)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(encoder_cached(name="fake", dimensions=8))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(created) == 1 and len({id(r) for r in results}) == 1
    assert encoder_cached(name="fake", dimensions=9) is not results[0]


def test_encoder_cached_tells_states_apart_unless_given_a_key(monkeypatch, tfidf):
    monkeypatch.setattr(encoders, "_cache", LoadedOnce())
    other = encoder_create(name="tfidf-svd", dimensions=3)
    other.fit(CATALOG)

    first = encoder_cached(name="tfidf-svd", state=tfidf.state())
    second = encoder_cached(name="tfidf-svd", state=other.state())
    keyed = encoder_cached(name="tfidf-svd", state=tfidf.state(), cache_key=7)

    assert first is not second and (first.dimensions, second.dimensions) == (6, 3)
    assert encoder_cached(name="tfidf-svd", state=tfidf.state()) is first
    assert encoder_cached(name="tfidf-svd", state=b"ignored when keyed", cache_key=7) is keyed


def test_forked_children_forget_the_parents_encoders(monkeypatch):
    cache: LoadedOnce[encoders.TextEncoder] = LoadedOnce()
    cache.get("parent", encoders.FakeEncoder)
    monkeypatch.setattr(encoders, "_cache", cache)

    encoders._forget_cache_in_child()

    assert cache.get("parent", lambda: None) is None  # the parent's encoder is gone: the child loads its own


# ---- the real MiniLM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> encoders.SentenceTransformerEncoder:
    return encoders.SentenceTransformerEncoder(name="minilm", precision="fp32", threads=2)


@pytest.mark.minilm
def test_minilm_encodes_normalised_384_d_vectors(minilm):
    vectors = minilm.encode(["a cat sat on the mat", "Toy Story (1995) Adventure|Animation|Children"])

    assert vectors.shape == (2, 384) and minilm.dimensions == 384
    assert_unit_rows(vectors)
    assert minilm.config() == {"name": "minilm", "dimensions": 384, "precision": "fp32"}
    assert minilm.state() == b""


@pytest.mark.minilm
def test_minilm_puts_a_cat_on_a_mat_nearer_a_kitten_than_a_market_crash(minilm):
    cat, kitten, crash = minilm.encode(["a cat sat on the mat", "a kitten on a rug", "stock market crash"])

    assert cosine(cat, kitten) > cosine(cat, crash) + 0.3


@pytest.mark.minilm
def test_minilm_keeps_the_input_order_while_batching_by_length(minilm):
    texts = ["short", "a much longer sentence about films and the people who make them", "mid length text"]

    together = minilm.encode(texts)
    alone = np.vstack([minilm.encode([text]) for text in texts])

    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.minilm
def test_minilm_chunks_a_long_text_and_averages_the_chunks_by_length(minilm):
    space = "Astronauts float in orbit around the planet, watching stars. " * 40
    cooking = "Chefs simmer tomato sauce with garlic and basil in the kitchen. " * 10
    long_text = space + cooking

    chunks, owners, lengths = minilm._chunks([long_text])
    vector = minilm.encode([long_text])[0]

    assert len(chunks) >= 3 and (lengths <= minilm.chunk_tokens).all() and owners.tolist() == [0] * len(chunks)
    expected = chunks_average(minilm.encode(chunks), owners, lengths, n_texts=1)[0]
    np.testing.assert_allclose(vector, expected, atol=1e-5)
    space_only, cooking_only = minilm.encode([space[:300], cooking[:300]])
    assert cosine(vector, space_only) > cosine(vector, cooking_only)  # most of its tokens are about space


@pytest.mark.minilm
def test_minilm_gives_empty_text_no_vector(minilm):
    assert nonzero_rows(minilm.encode(["", "words"])).tolist() == [False, True]
    assert minilm.encode([]).shape == (0, 384)


@pytest.mark.minilm
def test_minilm_in_bf16_stays_within_rounding_of_fp32(minilm):
    texts = ["Heat (1995). Genres: Action, Crime, Thriller", "Notting Hill (1999). Genres: Comedy, Romance"]
    bf16 = encoder_create(name="minilm", precision="bf16", threads=2)

    similarities = (bf16.encode(texts) * minilm.encode(texts)).sum(axis=1)

    assert bf16.config()["precision"] == "bf16"
    assert (similarities > 0.999).all()


@pytest.mark.minilm
def test_any_sentence_transformers_path_is_accepted_and_named_by_it(minilm):
    path = encoders.minilm_path()

    encoder = encoder_create(name=path, precision="fp32", threads=2)

    assert encoder.name == path and encoder.dimensions == 384
    np.testing.assert_allclose(encoder.encode(["a kitten"]), minilm.encode(["a kitten"]), atol=1e-6)
    with pytest.raises(ValueError, match="384"):
        encoder_create(name="minilm", dimensions=256)


def test_l2_normalise_scales_rows_to_unit_length_and_keeps_zero_and_empty_inputs():
    rows = encoders.l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]], dtype=np.float32))

    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    assert rows.dtype == np.float32
    assert encoders.l2_normalise(np.zeros((0, 3))).shape == (0, 3)
