"""Similar items for an item just PUT, before any model has a vector for it: never empty while
other items match, and ``strategy`` says which fallback answered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from embeddings import content, services
from embeddings.learners import LearnerParams
from embeddings.similarity import item_similar_list
from embeddings.spaces import item_vector_put
from recsys.models import Item
from recsys.services import interactions_ingest, items_upsert

pytestmark = pytest.mark.django_db

COOKING = ["pasta", "garlic", "basil", "tomato", "oven", "sauce", "dough", "soup"]
SKY = ["telescope", "comet", "planet", "galaxy", "orbit", "nebula", "lunar", "eclipse"]
SPACES = ["collaborative", "content", "hybrid", "image"]


@pytest.fixture
def served(settings):
    """Cooking and sky items with interactions, a content and a collaborative model and a custom
    ``image`` space; garden items exist but nobody has interacted with them."""
    settings.RECSYS_CONTENT_ENCODER = "fake"
    settings.RECSYS_CF_TUNE = False
    rows = []
    for topic, words in (("cooking", COOKING), ("sky", SKY)):
        for n in range(8):
            text = " ".join(words[(n + k) % 8] for k in range(4))
            rows.append({"id": f"{topic}{n}", "title": words[n], "text": text, "categories": [topic]})
    rows += [{"id": f"garden{n}", "title": f"Shed {n}", "categories": ["garden"]} for n in range(3)]
    items_upsert(rows=rows)
    events = [
        {"user": f"u{user}", "item": f"{'cooking' if user < 6 else 'sky'}{n}", "type": "purchase"}
        for user in range(12)
        for n in range(6)
        if (user + n) % 3
    ]
    interactions_ingest(rows=events)
    content.content_model_build(version_id=content.content_version_create().pk)
    params = LearnerParams(algorithm="als", factors=4, iterations=10, regularization=0.05)
    services.collaborative_model_train(version_id=services.collaborative_version_create(params=params).pk)
    for n in range(3):
        item_vector_put(item_external_id=f"sky{n}", space="image", vector=[1.0, float(n), 0.5])


def put(writer, item_id: str, **fields) -> None:
    response = writer.put(f"/api/v1/items/{item_id}", fields, format="json")
    assert response.status_code == 201, response.content


def similar(client, item_id: str, query: str = "") -> dict:
    response = client.get(f"/api/v1/items/{item_id}/similar?limit=4{query}")
    assert response.status_code == 200, response.content
    return response.json()


def ids(body: dict) -> list[str]:
    return [item["id"] for item in body["items"]]


@pytest.mark.parametrize("space", SPACES)
def test_new_item_gets_the_items_sharing_its_words_in_every_space(writer, served, space):
    put(writer, "fresh", title="Telescope and comet", text="planet galaxy nights", categories=["sky"])

    body = similar(writer, "fresh", f"&space={space}")

    assert body["strategy"] == "keyword" and body["model"] is None
    assert len(body["items"]) == 4 and all(i.startswith("sky") for i in ids(body))
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("space", SPACES)
def test_a_category_filter_applies_to_the_words_fallback(writer, served, space):
    put(writer, "fresh", title="Telescope and comet", text="with a pasta recipe", categories=["sky"])

    body = similar(writer, "fresh", f"&space={space}&category=cooking")

    assert body["strategy"] == "keyword" and ids(body) and all(i.startswith("cooking") for i in ids(body))


@pytest.mark.parametrize("space", SPACES)
def test_new_item_sharing_no_words_gets_popular_items_of_its_category(writer, served, space):
    put(writer, "fresh", title="Quasar", categories=["sky"])

    body = similar(writer, "fresh", f"&space={space}")

    assert body["strategy"] == "popular_in_category"
    assert len(body["items"]) == 4 and all(i.startswith("sky") for i in ids(body))


def test_new_item_of_a_new_category_gets_popular_items(writer, served):
    """The README's own example: a trail shoe in a shop of cooking and astronomy."""
    put(writer, "sku-1", title="Trail shoes", text="Light shoes for rocky trails", categories=["outdoor"])

    body = similar(writer, "sku-1", "&space=hybrid")

    assert body["strategy"] == "popular" and len(body["items"]) == 4


def test_a_filtered_category_without_interactions_gets_its_newest_items(writer, served):
    put(writer, "fresh", title="Quasar", categories=["sky"])

    body = similar(writer, "fresh", "&category=garden")

    assert body["strategy"] == "recent" and sorted(ids(body)) == ["garden0", "garden1", "garden2"]


def test_newest_items_come_first_with_the_items_own_category_first(writer, db):
    items_upsert(rows=[{"id": "old-tool", "categories": ["garden"]}, {"id": "new-book", "categories": ["books"]}])
    put(writer, "fresh", title="Quasar", categories=["garden"])

    assert ids(similar(writer, "fresh")) == ["old-tool", "new-book"]


def test_hidden_items_are_never_a_fallback(writer, served):
    items_upsert(rows=[{"id": "secret", "title": "Zebra zebra", "is_hidden": True, "categories": ["zoo"]}])
    put(writer, "fresh", title="Zebra", categories=["zoo"])

    body = similar(writer, "fresh", "&category=zoo")

    assert body["items"] == [] and body["strategy"] == "popular_in_category"


def test_words_with_quotes_and_backslashes_make_a_valid_query(writer, served):
    put(writer, "fresh", title="O'Brien's \\comet\\ 'lunar'", categories=["sky"])

    body = similar(writer, "fresh")

    assert body["strategy"] == "keyword" and all(i.startswith("sky") for i in ids(body))


def test_the_words_fallback_ranks_at_most_the_search_bound_of_matches(writer, served, settings):
    # Given a new item whose words match all eight sky items, and a bound of three ranked matches
    # (a broad item's words matched half of 100,000 items, and ranking them all ran past the limit)
    settings.RECSYS_SEARCH_MAX_RANKED = 3
    put(writer, "fresh", title="Telescope and comet", text="planet galaxy orbit nebula lunar eclipse")

    body = similar(writer, "fresh", "&space=content")

    # Then the words still answer, from at most three ranked matches
    assert body["strategy"] == "keyword"
    assert 1 <= len(body["items"]) <= 3 and all(i.startswith("sky") for i in ids(body))


@pytest.mark.parametrize(
    ("item", "query", "strategy"),
    [
        ("sky1", {"space": "hybrid"}, "hybrid"),
        ("fresh", {}, "keyword"),
        ("quiet", {"category": "garden"}, "recent"),
    ],
)
def test_every_similar_answer_carries_its_items_windows_for_the_cache(writer, served, item, query, strategy):
    # Given items whose windows close in an hour (a cached answer holding one is computed again then)
    put(writer, "fresh", title="Telescope and comet", text="planet galaxy nights", categories=["sky"])
    put(writer, "quiet", title="Quasar", categories=["sky"])
    closes = datetime.now(UTC) + timedelta(hours=1)
    Item.objects.exclude(external_id__in=["fresh", "quiet"]).update(available_until=closes)

    answer = item_similar_list(item_external_id=item, limit=3, **query)

    assert answer.strategy == strategy and answer.items
    assert all(found.until == pytest.approx(closes.timestamp()) for found in answer.items)
