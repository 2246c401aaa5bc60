"""Attribution inside the interactions ingest: by recommendation id, else by the latest impression in the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from recsys.ingestion.events import interactions_load
from recsys.ingestion.readers import csv_events_read
from recsys.models import Attribution, EventType
from recsys.recommendation_ids import recommendation_id_mint

pytestmark = pytest.mark.django_db
# Recent: an id is matched to impressions shown from a day before it was minted.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def at(delta: timedelta = timedelta()) -> str:
    return (T0 + delta).isoformat()


def show(client, items, *, when=T0, user="u1", recommendation_id=None):
    row = {"user": user, "items": items, "timestamp": when.isoformat()}
    if recommendation_id:
        row["recommendation_id"] = recommendation_id
    response = client.post("/api/v1/impressions", {"impressions": [row]}, format="json")
    assert response.status_code == 200 and not response.json()["errors"], response.content


def interact(client, *rows):
    response = client.post("/api/v1/interactions", {"interactions": list(rows)}, format="json")
    assert response.status_code == 200 and not response.json()["errors"], response.content
    return response.json()


def attributed():
    return {
        (a.item.external_id, a.event_type): a
        for a in Attribution.objects.select_related("item").order_by("item__external_id", "event_type")
    }


def test_a_click_naming_its_recommendation_takes_the_variant_from_the_id_and_the_place_from_the_impression(writer):
    rid = recommendation_id_mint(experiment_id=3, variant="treatment")
    show(writer, ["i1", "i2"], recommendation_id=rid)

    interact(
        writer,
        {"user": "u1", "item": "i2", "type": "click", "recommendation_id": rid, "timestamp": at(timedelta(minutes=5))},
    )

    click = attributed()[("i2", "click")]
    assert (click.recommendation_id, click.experiment_id, click.variant) == (rid, 3, "treatment")
    assert (click.shown_at, click.position) == (T0, 2)
    assert click.occurred_at == T0 + timedelta(minutes=5)
    assert click.weight == 2.0


def test_a_click_naming_a_recommendation_never_seen_as_impression_is_still_attributed_to_it(writer):
    rid = recommendation_id_mint(experiment_id=3, variant="control")
    interact(writer, {"user": "u1", "item": "i9", "type": "purchase", "recommendation_id": rid})

    purchase = attributed()[("i9", "purchase")]
    assert (purchase.experiment_id, purchase.variant, purchase.shown_at, purchase.position) == (
        3,
        "control",
        None,
        None,
    )


def test_a_click_without_id_goes_to_the_latest_impression_of_its_item_within_the_window(writer):
    early = recommendation_id_mint(experiment_id=1, variant="a")
    late = recommendation_id_mint(experiment_id=1, variant="b")
    show(writer, ["i1", "i2"], recommendation_id=early, when=T0 - timedelta(hours=3))
    show(writer, ["i3", "i1"], recommendation_id=late, when=T0 - timedelta(hours=1))
    show(writer, ["i1"], when=T0 + timedelta(minutes=1))  # after the click: not the one that led to it

    interact(writer, {"user": "u1", "item": "i1", "type": "add_to_cart", "timestamp": at()})

    cart = attributed()[("i1", "add_to_cart")]
    assert (cart.recommendation_id, cart.variant, cart.position) == (late, "b", 2)
    assert cart.shown_at == T0 - timedelta(hours=1)


@override_settings(RECSYS_ATTRIBUTION_WINDOW=3600)
def test_the_window_includes_its_edge_and_nothing_older(writer):
    show(writer, ["edge"], when=T0 - timedelta(hours=1))
    show(writer, ["past"], when=T0 - timedelta(hours=1, microseconds=1))
    show(writer, ["other-user"], user="u2", when=T0)

    interact(
        writer,
        {"user": "u1", "item": "edge", "type": "click", "timestamp": at()},
        {"user": "u1", "item": "past", "type": "click", "timestamp": at()},
        {"user": "u1", "item": "other-user", "type": "click", "timestamp": at()},
    )

    assert list(attributed()) == [("edge", "click")]


def test_events_that_do_not_count_as_clicks_are_not_attributed(writer):
    rid = recommendation_id_mint(experiment_id=3, variant="a")
    show(writer, ["i1"], recommendation_id=rid)

    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=1))},
        {
            "user": "u1",
            "item": "i1",
            "type": "dislike",
            "recommendation_id": rid,
            "timestamp": at(timedelta(seconds=2)),
        },
    )

    assert attributed() == {}


def test_an_operator_can_make_a_type_count_as_a_click(writer):
    EventType.objects.filter(name="view").update(counts_as_click=True)
    show(writer, ["i1"])
    interact(writer, {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=1))})
    assert list(attributed()) == [("i1", "view")]


def test_re_sending_an_attributed_event_changes_nothing(writer):
    show(writer, ["i1"])
    row = {"user": "u1", "item": "i1", "type": "like", "timestamp": at(timedelta(seconds=1))}
    interact(writer, row, row)

    assert interact(writer, row)["unchanged"] == 1
    assert Attribution.objects.count() == 1


def test_a_file_import_attributes_like_the_api(writer, tmp_path):
    rid = recommendation_id_mint(experiment_id=4, variant="a")
    show(writer, ["i1", "i2"], recommendation_id=rid)
    path = tmp_path / "events.csv"
    path.write_text(
        "user,item,type,timestamp,recommendation_id\n"
        f"u1,i1,click,{at(timedelta(seconds=5))},{rid}\n"
        f"u1,i2,click,{at(timedelta(seconds=6))},\n"
    )

    report = interactions_load(chunks=csv_events_read(path))

    assert report.rejected == 0
    clicks = attributed()
    assert (clicks[("i1", "click")].position, clicks[("i1", "click")].variant) == (1, "a")
    assert (clicks[("i2", "click")].position, clicks[("i2", "click")].recommendation_id) == (2, rid)


def test_an_interaction_with_a_malformed_recommendation_id_is_rejected_alone(writer):
    response = writer.post(
        "/api/v1/interactions",
        {
            "interactions": [
                {"user": "u1", "item": "i1", "type": "click", "recommendation_id": 5},
                {"user": "u1", "item": "i2", "type": "click"},
            ]
        },
        format="json",
    )
    body = response.json()
    assert body["created"] == 1
    assert body["errors"][0]["index"] == 0
    assert body["errors"][0]["error"]["details"] == {"recommendation_id": ["1-80 visible ASCII characters"]}
