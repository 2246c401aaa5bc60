"""Interaction ingestion: partial success, idempotency, weights, auto-creation, history."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from recsys.models import Interaction, Item, User
from recsys.selectors import CURSOR_PATTERN
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/interactions"


def send(client, *rows):
    response = client.post(URL, {"interactions": list(rows)}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def event(user="u1", item="i1", type="view", **extra):
    return {"user": user, "item": item, "type": type, **extra}


def test_events_are_stored_with_weights_of_their_type(writer):
    body = send(
        writer,
        event(type="purchase", timestamp="2026-01-01T10:00:00Z"),
        event(type="dislike", item="i2", timestamp="2026-01-01T10:00:00Z"),
        event(type="rating", item="i3", value=3.5, timestamp="2026-01-01T10:00:00+02:00"),
    )

    assert body == {"created": 3, "updated": 0, "unchanged": 0, "errors": []}
    stored = {i.item.external_id: i for i in Interaction.objects.select_related("item")}
    assert stored["i1"].weight == 8.0
    assert stored["i2"].weight == -4.0
    assert (stored["i3"].value, stored["i3"].weight) == (3.5, 3.5)
    assert stored["i3"].timestamp == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def test_valid_rows_are_stored_and_bad_rows_reported_by_index(writer):
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    body = send(
        writer,
        event(item="ok-1"),
        event(type="teleport"),
        event(type="rating"),
        event(user="x" * 129),
        event(timestamp="not a time"),
        event(timestamp="2026-01-01T10:00:00"),
        event(timestamp=future),
        event(value="high"),
        event(value=True),
        {"user": "u1", "item": "i1"},
        event(item="ok-2", colour="red"),
        "nonsense",
        event(item="ok-3"),
    )

    assert body["created"] == 2
    assert [e["index"] for e in body["errors"]] == list(range(1, 12))
    fields = [next(iter(e["error"]["details"])) for e in body["errors"]]
    assert fields == [
        "type",
        "value",
        "user",
        "timestamp",
        "timestamp",
        "timestamp",
        "value",
        "value",
        "type",
        "colour",
        "non_field_errors",
    ]
    assert set(Interaction.objects.values_list("item__external_id", flat=True)) == {"ok-1", "ok-3"}


def test_resending_the_same_events_is_idempotent(writer):
    rows = [event(item=f"i{n}", timestamp="2026-01-01T10:00:00Z") for n in range(3)]
    send(writer, *rows)

    body = send(writer, *rows)

    assert body == {"created": 0, "updated": 0, "unchanged": 3, "errors": []}
    assert Interaction.objects.count() == 3


def test_resending_with_a_new_value_updates_it(writer):
    send(writer, event(type="rating", value=2, timestamp="2026-01-01T10:00:00Z"))

    body = send(writer, event(type="rating", value=5, timestamp="2026-01-01T10:00:00Z"))

    assert (body["created"], body["updated"]) == (0, 1)
    assert Interaction.objects.get().weight == 5.0


def test_duplicates_within_one_batch_count_once(writer):
    row = event(timestamp="2026-01-01T10:00:00Z")

    body = send(writer, row, row, row)

    assert body["created"] == 1 and body["unchanged"] == 0
    assert Interaction.objects.count() == 1


def test_unknown_users_are_created_and_unknown_items_become_stubs(writer):
    ItemFactory(external_id="known", title="Known")

    send(writer, event(user="new-user", item="known"), event(user="new-user", item="brand-new"))

    assert User.objects.filter(external_id="new-user").exists()
    stub = Item.objects.get(external_id="brand-new")
    assert stub.is_stub and stub.title == ""
    assert not Item.objects.get(external_id="known").is_stub


@override_settings(RECSYS_AUTO_CREATE_ITEMS=False)
def test_unknown_items_are_rejected_per_row_when_auto_creation_is_off(writer):
    ItemFactory(external_id="known")

    body = send(writer, event(item="known"), event(item="unknown"))

    assert body["created"] == 1
    assert body["errors"][0]["index"] == 1
    assert body["errors"][0]["id"] is None  # every batch error has the key (API.md); an event has no id of its own
    assert body["errors"][0]["error"]["code"] == "not_found"
    assert not Item.objects.filter(external_id="unknown").exists()


def test_ingestion_query_count_does_not_grow_with_batch_size(writer, django_assert_max_num_queries):
    rows = [
        event(user=f"u{n % 50}", item=f"i{n % 300}", timestamp=f"2026-01-01T10:{n % 60:02}:00Z") for n in range(1000)
    ]

    with django_assert_max_num_queries(12):
        send(writer, *rows)


def test_history_is_newest_first_and_pages_with_a_cursor(writer):
    send(writer, *[event(item=f"i{n}", timestamp=f"2026-01-0{n + 1}T00:00:00Z") for n in range(5)])

    first = writer.get("/api/v1/users/u1/interactions?limit=2").json()
    second = writer.get(f"/api/v1/users/u1/interactions?limit=2&cursor={first['next_cursor']}").json()
    third = writer.get(f"/api/v1/users/u1/interactions?limit=2&cursor={second['next_cursor']}").json()

    items = [row["item"] for page in (first, second, third) for row in page["interactions"]]
    assert items == ["i4", "i3", "i2", "i1", "i0"]
    assert third["next_cursor"] is None
    assert first["interactions"][0] == {
        "item": "i4",
        "type": "view",
        "value": None,
        "weight": 1.0,
        "timestamp": "2026-01-05T00:00:00Z",
    }


def test_history_pages_do_not_skip_events_with_equal_timestamps(writer):
    send(writer, *[event(item=f"i{n}", timestamp="2026-01-01T00:00:00Z") for n in range(5)])

    seen, cursor = [], ""
    for _ in range(5):
        page = writer.get(f"/api/v1/users/u1/interactions?limit=2&cursor={cursor}").json()
        seen += [row["item"] for row in page["interactions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == [f"i{n}" for n in range(5)]


@pytest.mark.parametrize("cursor", ["!!!", "12-x", "1-2-3", "9" * 17 + "-1", "1-" + "9" * 19, "MjAyNnwx"])
def test_a_cursor_of_another_shape_is_400(writer, cursor):
    send(writer, event())

    response = writer.get(f"/api/v1/users/u1/interactions?cursor={cursor}")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"cursor": ["invalid"]}


@pytest.mark.parametrize("cursor", ["0-0", "9" * 16 + "-" + "9" * 18, "1767225600000000-5"])
def test_every_cursor_the_schema_allows_is_a_position_to_page_from(writer, cursor):
    send(writer, *[event(item=f"i{n}", timestamp=f"2026-01-0{n + 1}T00:00:00Z") for n in range(3)])

    response = writer.get(f"/api/v1/users/u1/interactions?cursor={cursor}")

    assert response.status_code == 200, response.content
    assert re.fullmatch(CURSOR_PATTERN, cursor)


def test_the_schema_states_the_cursor_shape_and_its_400():
    operation = (
        APIClient()
        .get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
        .json()["paths"]["/api/v1/users/{user_id}/interactions"]["get"]
    )

    cursor = next(p for p in operation["parameters"] if p["name"] == "cursor")
    assert cursor["schema"]["pattern"] == CURSOR_PATTERN
    assert "cursor" in operation["responses"]["400"]["description"]


@override_settings(RECSYS_INTERACTION_RETENTION_DAYS=30)
def test_an_event_older_than_the_retention_is_refused_not_stored_and_then_dropped(writer):
    old = (datetime.now(UTC) - timedelta(days=31)).isoformat()
    recent = (datetime.now(UTC) - timedelta(days=29)).isoformat()

    body = send(writer, event(timestamp=old), event(item="i2", timestamp=recent))

    assert body["created"] == 1
    assert [e["index"] for e in body["errors"]] == [0]
    assert "retention" in body["errors"][0]["error"]["message"]
    assert list(Interaction.objects.values_list("item__external_id", flat=True)) == ["i2"]
