"""Content over the API: similar by content and hybrid, cold users' content profiles, search,
near-duplicates and custom vector spaces."""

from __future__ import annotations

import pytest

from embeddings import content, services
from embeddings.learners import LearnerParams
from recsys.services import interactions_ingest, items_upsert

pytestmark = pytest.mark.django_db

COOKING = ["pasta", "garlic", "basil", "tomato", "oven", "sauce", "dough", "soup"]
SKY = ["telescope", "comet", "planet", "galaxy", "orbit", "nebula", "lunar", "eclipse"]


def catalogue() -> list[dict]:
    items = []
    for topic, words in (("cooking", COOKING), ("sky", SKY)):
        for n in range(8):
            text = " ".join(words[(n + k) % 8] for k in range(4))
            items.append(
                {"id": f"{topic}{n}", "title": f"{words[n]} {words[(n + 1) % 8]}", "text": text, "categories": [topic]}
            )
    return items


@pytest.fixture
def content_model(settings):
    settings.RECSYS_CONTENT_ENCODER = "fake"
    items_upsert(rows=catalogue())
    version = content.content_version_create()
    return content.content_model_build(version_id=version.pk)


@pytest.fixture
def both_models(content_model, settings):
    """A collaborative model that knows cooking0..5 and sky0..5 only (6 and 7 are new, and stay
    without a collaborative vector: cold items are not placed)."""
    return train_both(settings, cold_items=False)


def train_both(settings, *, cold_items: bool):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_COLD_ITEMS = cold_items
    rows = []
    for user in range(12):
        topic = "cooking" if user < 6 else "sky"
        for n in range(6):
            if (user + n) % 3:
                rows.append({"user": f"u{user}", "item": f"{topic}{n}", "type": "purchase"})
    interactions_ingest(rows=rows)
    params = LearnerParams(algorithm="als", factors=4, iterations=10, regularization=0.05)
    version = services.collaborative_version_create(params=params)
    return services.collaborative_model_train(version_id=version.pk)


def ids(body: dict) -> list[str]:
    return [item["id"] for item in body["items"]]


def test_similar_by_content_lists_items_of_the_same_topic(reader, content_model):
    body = reader.get("/api/v1/items/cooking0/similar?space=content&limit=5").json()

    assert body["strategy"] == "content" and body["model"] == {"kind": "content", "version": content_model.pk}
    assert "cooking0" not in ids(body) and all(i.startswith("cooking") for i in ids(body))


def test_item_new_to_the_collaborative_model_falls_back_to_content(reader, both_models):
    body = reader.get("/api/v1/items/sky7/similar?limit=4").json()

    assert body["strategy"] == "content"
    assert all(i.startswith("sky") for i in ids(body))


def test_a_new_item_with_text_is_placed_in_the_collaborative_space_by_the_content_map(reader, content_model, settings):
    # Given cold items on: the run maps content vectors into its space and places sky6, sky7
    train_both(settings, cold_items=True)

    body = reader.get("/api/v1/items/sky7/similar?limit=4").json()

    assert body["strategy"] == "collaborative"
    # twelve trained items are little to learn a map from: its nearest neighbours are of its topic
    assert all(i.startswith("sky") for i in ids(body)[:2])


def test_hybrid_blends_both_spaces(reader, both_models):
    body = reader.get("/api/v1/items/cooking1/similar?space=hybrid&limit=4").json()

    assert body["strategy"] == "hybrid" and body["model"]["kind"] == "hybrid"
    assert all(i.startswith("cooking") for i in ids(body))
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_hybrid_for_an_item_without_a_collaborative_vector_is_content_alone(reader, both_models):
    body = reader.get("/api/v1/items/cooking7/similar?space=hybrid&limit=3").json()

    assert body["strategy"] == "content"


def test_new_item_is_similar_listable_once_encoded(reader, content_model):
    items_upsert(rows=[{"id": "fresh", "text": "telescope comet planet galaxy", "categories": ["sky"]}])
    assert reader.get("/api/v1/items/fresh/similar?space=content").json()["strategy"] == "keyword"

    content.content_items_encode()

    body = reader.get("/api/v1/items/fresh/similar?space=content&limit=3").json()
    assert body["strategy"] == "content" and all(i.startswith("sky") for i in ids(body))


def test_user_known_only_through_new_items_gets_a_content_profile(reader, both_models):
    interactions_ingest(rows=[{"user": "newbie", "item": item, "type": "purchase"} for item in ("sky6", "sky7")])

    body = reader.get("/api/v1/users/newbie/recommendations?limit=4").json()

    assert body["strategy"] == "content_profile"
    assert all(i.startswith("sky") for i in ids(body)) and not {"sky6", "sky7"} & set(ids(body))


def test_cold_user_gets_a_content_profile_when_no_collaborative_model_exists(reader, content_model):
    interactions_ingest(rows=[{"user": "early", "item": "cooking2", "type": "view"}])

    body = reader.get("/api/v1/users/early/recommendations?limit=3").json()

    assert body["strategy"] == "content_profile" and all(i.startswith("cooking") for i in ids(body))


def test_disliked_items_pull_the_content_profile_away(reader, content_model):
    interactions_ingest(
        rows=[
            {"user": "picky", "item": "cooking2", "type": "view"},
            {"user": "picky", "item": "sky2", "type": "dislike"},
        ]
    )

    body = reader.get("/api/v1/users/picky/recommendations?limit=3").json()

    assert body["strategy"] == "content_profile" and all(i.startswith("cooking") for i in ids(body))


def test_session_of_new_items_uses_content(reader, both_models):
    body = reader.post("/api/v1/recommendations", {"items": ["sky6", "sky7"], "limit": 3}, format="json").json()

    assert body["strategy"] == "content_session" and all(i.startswith("sky") for i in ids(body))


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_search_finds_items_by_their_words(reader, content_model, mode):
    body = reader.get(f"/api/v1/search?q=telescope comet&mode={mode}&limit=3").json()

    assert body["strategy"] == mode and ids(body)
    assert all(i.startswith("sky") for i in ids(body))


def test_search_filters_by_category(reader, content_model):
    body = reader.get("/api/v1/search?q=telescope&mode=semantic&category=cooking&limit=3").json()

    assert ids(body) and all(i.startswith("cooking") for i in ids(body))


def test_keyword_search_leaves_out_hidden_items(reader, content_model):
    items_upsert(rows=[{"id": "sky0", "is_hidden": True}])

    body = reader.get("/api/v1/search?q=telescope&mode=keyword&limit=20").json()

    assert ids(body) and "sky0" not in ids(body)


def test_semantic_search_before_any_content_model_is_409_and_hybrid_is_keyword(reader, settings):
    items_upsert(rows=catalogue())

    assert reader.get("/api/v1/search?q=comet&mode=semantic").status_code == 409
    assert reader.get("/api/v1/search?q=comet").json()["strategy"] == "keyword"


@pytest.mark.parametrize("query", ["", "q=", "q=" + "x" * 600, "q=comet&mode=fuzzy", "q=comet&limit=0"])
def test_bad_searches_are_400(reader, content_model, query):
    assert reader.get(f"/api/v1/search?{query}").status_code == 400


def test_duplicates_are_items_above_the_threshold(reader, content_model):
    items_upsert(
        rows=[{"id": "copy", "title": "pasta garlic", "text": "pasta garlic basil tomato", "categories": ["cooking"]}]
    )
    content.content_items_encode()

    strict = reader.get("/api/v1/items/copy/duplicates?threshold=0.99").json()
    loose = reader.get("/api/v1/items/copy/duplicates?threshold=0.1&limit=50").json()

    assert ids(strict) == ["cooking0"]
    assert all(item["score"] >= 0.1 for item in loose["items"]) and len(ids(loose)) > 1
    assert reader.get("/api/v1/items/nope/duplicates").status_code == 404
    assert reader.get("/api/v1/items/copy/duplicates?threshold=2").status_code == 400


def test_duplicates_take_the_rules_of_every_recommendation_endpoint(reader, writer, content_model):
    items_upsert(
        rows=[
            {"id": "copy", "title": "pasta garlic", "text": "pasta garlic basil tomato", "categories": ["cooking"]},
            {
                "id": "copy2",
                "title": "pasta garlic",
                "text": "pasta garlic basil tomato",
                "categories": ["cooking"],
                "attributes": {"shop": "b"},
            },
        ]
    )
    content.content_items_encode()
    found = ids(reader.get("/api/v1/items/copy/duplicates?threshold=0.99").json())
    assert sorted(found) == ["cooking0", "copy2"]

    def asked(query: str) -> list[str]:
        answer = reader.get(f"/api/v1/items/copy/duplicates?threshold=0.99&{query}")
        assert answer.status_code == 200, answer.json()
        return ids(answer.json())

    assert asked('filter=id != "cooking0"') == ["copy2"]
    assert asked('filter=attributes.shop = "b"') == ["copy2"]
    assert asked("category=sky") == []
    assert asked('boost=id = "copy2":100&limit=1') == ["copy2"]
    assert asked('boost=id = "cooking0":100&limit=1') == ["cooking0"]
    interactions_ingest(rows=[{"user": "someone", "item": "sky0", "type": "view"}])
    assert writer.post("/api/v1/users/someone/hidden", {"items": ["copy2"]}, format="json").status_code == 200
    assert asked("user=someone") == ["cooking0"]
    assert reader.get("/api/v1/items/copy/duplicates?filter=price <").status_code == 400


def test_custom_vectors_fix_dimensions_and_are_searchable(writer, admin_client_api, content_model):
    first = admin_client_api.put("/api/v1/items/cooking0/vectors/image", {"vector": [1.0, 0.0, 0.0]}, format="json")
    writer.put("/api/v1/items/cooking1/vectors/image", {"vector": [0.9, 0.1, 0.0]}, format="json")
    writer.put("/api/v1/items/sky0/vectors/image", {"vector": [0.0, 0.0, 1.0]}, format="json")
    again = writer.put("/api/v1/items/cooking0/vectors/image", {"vector": [1.0, 0.05, 0.0]}, format="json")

    assert first.status_code == 201 and first.json() == {"item": "cooking0", "space": "image", "dimensions": 3}
    assert again.status_code == 200
    body = writer.get("/api/v1/items/cooking0/similar?space=image&limit=2").json()
    assert ids(body) == ["cooking1", "sky0"] and body["strategy"] == "custom"
    assert "image" in writer.get("/api/v1/items/cooking0").json()["vectors"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/items/cooking0/vectors/image", {"vector": [1.0, 2.0]}, 400),  # other dimensions
        ("/api/v1/items/cooking0/vectors/image", {"vector": [0.0, 0.0, 0.0]}, 400),
        ("/api/v1/items/cooking0/vectors/image", {"vector": ["a", 1, 2]}, 400),
        ("/api/v1/items/cooking0/vectors/image", {"vector": [1, 2, 3], "extra": 1}, 400),
        ("/api/v1/items/cooking0/vectors/Bad-Name", {"vector": [1, 2, 3]}, 400),
        ("/api/v1/items/cooking0/vectors/content", {"vector": [1, 2, 3]}, 400),
        ("/api/v1/items/ghost/vectors/image", {"vector": [1, 2, 3]}, 404),
    ],
)
def test_bad_custom_vectors_are_refused(writer, admin_client_api, content_model, path, body, status):
    admin_client_api.put("/api/v1/items/sky1/vectors/image", {"vector": [1.0, 2.0, 3.0]}, format="json")

    assert writer.put(path, body, format="json").status_code == status


def test_similar_in_an_unknown_space_is_404_and_a_malformed_space_400(reader, content_model):
    assert reader.get("/api/v1/items/cooking0/similar?space=nothing").status_code == 404
    assert reader.get("/api/v1/items/cooking0/similar?space=Bad-Name").status_code == 400


def test_training_a_content_model_through_the_api(admin_client_api, settings):
    settings.RECSYS_CONTENT_ENCODER = "fake"
    items_upsert(rows=catalogue())

    response = admin_client_api.post("/api/v1/models/train", {"kind": "content"}, format="json")

    assert response.status_code == 202
    version = response.json()["training_run"]
    listed = admin_client_api.get("/api/v1/models?kind=content").json()
    assert listed[0]["version"] == version and listed[0]["status"] == "active"
    assert listed[0]["counts"]["encoded"] == 16


@pytest.mark.minilm
def test_semantic_search_with_the_real_minilm_finds_items_by_meaning(reader, settings):
    settings.RECSYS_CONTENT_ENCODER = "minilm"
    items_upsert(
        rows=[
            {"id": "kitten", "title": "Caring for a young cat", "text": "Feeding and grooming a kitten."},
            {"id": "bonds", "title": "Fixed income investing", "text": "How government bonds pay interest."},
            {"id": "bread", "title": "Sourdough at home", "text": "Flour, water, salt and a starter."},
        ]
    )
    version = content.content_model_build(version_id=content.content_version_create().pk)

    body = reader.get("/api/v1/search?q=looking+after+my+new+pet&mode=semantic&limit=3").json()

    assert version.dimensions == 384 and version.params["encoder"] == "minilm"
    assert ids(body)[0] == "kitten"  # no word in common with the query
    assert reader.get("/api/v1/search?q=looking+after+my+new+pet&mode=keyword").json()["items"] == []


def test_item_shows_its_content_vector_and_cluster_and_an_empty_item_has_none(reader, content_model):
    items_upsert(rows=[{"id": "empty"}])
    content.content_items_encode()

    shown = reader.get("/api/v1/items/cooking0").json()["vectors"]["content"]

    assert shown["version"] == content_model.pk
    assert 0 <= shown["cluster"] < len(content_model.centroids)
    assert "content" not in reader.get("/api/v1/items/empty").json()["vectors"]


def test_hybrid_asks_each_space_for_a_bounded_number_of_candidates(reader, both_models, monkeypatch):
    from embeddings import similarity

    asked = []
    nearest = similarity.version_nearest_items

    def counted(version, vector, *, limit, **kwargs):
        asked.append(limit)
        return nearest(version, vector, limit=limit, **kwargs)

    monkeypatch.setattr(similarity, "version_nearest_items", counted)

    response = reader.get("/api/v1/items/cooking1/similar?space=hybrid&limit=200&boost=attributes.x = 1:2")

    assert response.status_code == 200, response.content
    assert asked and max(asked) <= 1_000  # limit 200 and a boost asked 2,400 of each space


def test_a_history_that_ended_years_ago_still_makes_a_content_profile(reader, content_model):
    # Ages from now decayed an imported history of 2016 to nothing (no profile, popular instead); the
    # profile is normalised, so ages from the user's latest item give the same direction without that
    interactions_ingest(
        rows=[
            {"user": "old-fan", "item": f"sky{n}", "type": "purchase", "timestamp": f"2016-0{n + 1}-01T00:00:00Z"}
            for n in range(3)
        ]
    )

    body = reader.get("/api/v1/users/old-fan/recommendations?limit=3").json()

    assert body["strategy"] == "content_profile" and all(i.startswith("sky") for i in ids(body))


def test_a_scenarios_pins_never_show_as_duplicates(reader, content_model):
    from recsys.rules.scenarios import scenario_put

    items_upsert(
        rows=[{"id": "copy", "title": "pasta garlic", "text": "pasta garlic basil tomato", "categories": ["cooking"]}]
    )
    content.content_items_encode()
    scenario_put(name="shop", body={"pins": [{"item": "sky3", "position": 1}], "filter": 'id != "cooking1"'})

    found = ids(reader.get("/api/v1/items/copy/duplicates?threshold=0.99&scenario=shop").json())

    assert "sky3" not in found and found == ["cooking0"]  # its filter applies, its pin does not
