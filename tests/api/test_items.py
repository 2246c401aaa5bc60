"""Item upsert, read, delete and batch upsert."""

from __future__ import annotations

import pytest

from recsys.models import Interaction, Item
from tests.factories import InteractionFactory, ItemFactory

pytestmark = pytest.mark.django_db

TOY_STORY = {
    "title": "Toy Story",
    "text": "Toys come alive when nobody looks",
    "categories": ["Animation", "Comedy"],
    "attributes": {"year": 1995},
    "published_at": "1995-11-22T00:00:00+00:00",
}


def test_put_creates_an_item_with_201_and_returns_its_fields(writer):
    response = writer.put("/api/v1/items/movie:1", TOY_STORY, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["id"] == "movie:1"
    assert body["title"] == "Toy Story"
    assert body["categories"] == ["Animation", "Comedy"]
    assert body["attributes"] == {"year": 1995}
    assert body["published_at"] == "1995-11-22T00:00:00Z"
    assert body["vectors"] == {}
    assert "pk" not in body and isinstance(body["id"], str)


def test_put_again_updates_only_the_fields_sent(writer):
    writer.put("/api/v1/items/m1", TOY_STORY, format="json")

    response = writer.put("/api/v1/items/m1", {"is_hidden": True}, format="json")

    assert response.status_code == 200
    item = Item.objects.get(external_id="m1")
    assert item.is_hidden is True
    assert item.title == "Toy Story" and item.categories == ["Animation", "Comedy"]


def test_text_change_marks_the_item_for_encoding_but_attribute_change_does_not(writer):
    writer.put("/api/v1/items/m1", TOY_STORY, format="json")
    first = Item.objects.get(external_id="m1").content_changed_at

    writer.put("/api/v1/items/m1", {"attributes": {"year": 1996}}, format="json")
    after_attributes = Item.objects.get(external_id="m1").content_changed_at
    writer.put("/api/v1/items/m1", {"text": "A new description"}, format="json")
    after_text = Item.objects.get(external_id="m1").content_changed_at

    assert first is not None
    assert after_attributes == first
    assert after_text > first


def test_full_text_column_is_kept_current_by_the_database(writer):
    writer.put("/api/v1/items/m1", TOY_STORY, format="json")
    writer.put("/api/v1/items/m1", {"text": "spaceships and asteroids"}, format="json")

    found = Item.objects.filter(search_vector="asteroid").values_list("external_id", flat=True)

    assert list(found) == ["m1"]


def test_get_unknown_item_is_404(reader):
    response = reader.get("/api/v1/items/nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"titel": "typo"}, "titel"),
        ({"title": 5}, "title"),
        ({"categories": "Comedy"}, "categories"),
        ({"categories": [1, 2]}, "categories"),
        ({"attributes": [1]}, "attributes"),
        ({"is_hidden": "yes"}, "is_hidden"),
        ({"published_at": "yesterday"}, "published_at"),
        ({"published_at": "2024-01-01T00:00:00"}, "published_at"),
        ({"title": "x" * 1001}, "title"),
    ],
)
def test_invalid_item_fields_are_400_naming_the_field(writer, body, field):
    response = writer.put("/api/v1/items/m1", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert not Item.objects.exists()


@pytest.mark.parametrize("bad_id", ["x" * 129, "has space", "emoji-☃", "batch", "a/similar", "a/vectors/img"])
def test_invalid_or_reserved_ids_are_rejected(writer, bad_id):
    response = writer.put(f"/api/v1/items/{bad_id}", {"title": "t"}, format="json")

    assert response.status_code in {400, 404, 405}
    assert response.json()["error"]["code"] in {"validation_error", "not_found", "method_not_allowed"}
    assert not Item.objects.exists()


def test_ids_may_contain_slashes_and_colons(writer):
    assert writer.put("/api/v1/items/shop/sku:42@eu", {"title": "t"}, format="json").status_code == 201

    assert writer.get("/api/v1/items/shop/sku:42@eu").json()["id"] == "shop/sku:42@eu"


def test_delete_removes_the_item_and_its_interactions(writer):
    item = ItemFactory(external_id="gone")
    InteractionFactory.create_batch(3, item=item)
    kept = InteractionFactory()

    response = writer.delete("/api/v1/items/gone")

    assert response.status_code == 204
    assert not Item.objects.filter(external_id="gone").exists()
    assert list(Interaction.objects.values_list("pk", flat=True)) == [kept.pk]


def test_delete_unknown_item_is_404(writer):
    assert writer.delete("/api/v1/items/nope").status_code == 404


def test_batch_stores_valid_rows_and_reports_bad_ones_by_index(writer):
    ItemFactory(external_id="old", title="Old title")
    rows = [
        {"id": "new-1", "title": "One"},
        {"id": "bad id", "title": "Two"},
        {"id": "old", "title": "New title"},
        {"id": "new-2", "categories": "not-a-list"},
        {"title": "no id"},
        "not an object",
        {"id": "new-3", "text": "three"},
    ]

    response = writer.post("/api/v1/items/batch", {"items": rows}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["updated"]) == (2, 1)
    assert [e["index"] for e in body["errors"]] == [1, 3, 4, 5]
    assert body["errors"][0]["id"] == "bad id"
    assert body["errors"][1]["error"]["details"] == {"categories": ["not a list of strings"]}
    assert Item.objects.get(external_id="old").title == "New title"
    assert set(Item.objects.values_list("external_id", flat=True)) == {"old", "new-1", "new-3"}


def test_batch_resend_reports_rows_unchanged(writer):
    rows = [{"id": f"i{n}", "title": f"T{n}"} for n in range(5)]
    writer.post("/api/v1/items/batch", {"items": rows}, format="json")

    body = writer.post("/api/v1/items/batch", {"items": rows}, format="json").json()

    assert body == {"created": 0, "updated": 0, "unchanged": 5, "errors": []}


def test_batch_with_a_repeated_id_merges_fields_in_order(writer):
    rows = [{"id": "a", "title": "first", "text": "kept"}, {"id": "a", "title": "second"}]

    body = writer.post("/api/v1/items/batch", {"items": rows}, format="json").json()

    item = Item.objects.get(external_id="a")
    assert body["created"] == 1
    assert (item.title, item.text) == ("second", "kept")


def test_upsert_turns_a_stub_into_a_full_item(writer):
    writer.post("/api/v1/interactions", {"interactions": [{"user": "u", "item": "s", "type": "view"}]}, format="json")
    assert Item.objects.get(external_id="s").is_stub

    response = writer.put("/api/v1/items/s", {"title": "Now described"}, format="json")

    assert response.status_code == 200
    assert not Item.objects.get(external_id="s").is_stub


def test_batch_envelope_must_hold_a_list(writer):
    response = writer.post("/api/v1/items/batch", {"items": {"id": "a"}}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_a_put_answers_the_items_vectors_as_a_get_does(writer, settings):
    from embeddings import content

    settings.RECSYS_CONTENT_ENCODER = "fake"
    writer.put("/api/v1/items/lamp", {"title": "desk lamp", "text": "a lamp"}, format="json")
    content.content_model_build(version_id=content.content_version_create().pk)

    answer = writer.put("/api/v1/items/lamp", {"title": "desk lamp", "text": "a brighter lamp"}, format="json")

    assert answer.status_code == 200
    assert answer.json()["vectors"] == writer.get("/api/v1/items/lamp").json()["vectors"] != {}  # was always {}
