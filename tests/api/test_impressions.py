"""Impression ingestion: one row per shown item, idempotent re-sends, partial success, partitions, cascade."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import override_settings

from recsys import services
from recsys.feedback.partitions import impression_partitions_list
from recsys.models import Impression, Item
from recsys.recommendation_ids import recommendation_id_mint, recommendation_id_read
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/impressions"


def send(client, *rows, status=200):
    response = client.post(URL, {"impressions": list(rows)}, format="json")
    assert response.status_code == status, response.content
    return response.json()


def shown(user="u1"):
    rows = Impression.objects.filter(user__external_id=user).select_related("item").order_by("position")
    return [(i.item.external_id, i.position) for i in rows]


def test_each_shown_item_is_one_impression_at_its_position_with_the_variant_of_its_recommendation(writer):
    rid = recommendation_id_mint(experiment_id=7, variant="b")

    body = send(writer, {"recommendation_id": rid, "user": "u1", "items": ["i1", "i2", "i3"]})

    assert body == {"created": 3, "updated": 0, "unchanged": 0, "errors": []}
    assert shown() == [("i1", 1), ("i2", 2), ("i3", 3)]
    stored = Impression.objects.first()
    assert (stored.recommendation_id, stored.experiment_id, stored.variant) == (rid, 7, "b")
    # Without a timestamp, the impression is dated when its recommendation id was minted.
    assert abs(stored.shown_at - recommendation_id_read(rid).issued_at) < timedelta(milliseconds=1)


def test_re_sending_impressions_changes_nothing(writer):
    rid = recommendation_id_mint()
    rows = [
        {"recommendation_id": rid, "user": "u1", "items": ["i1", "i2"]},  # dated by its id
        {"user": "u2", "items": ["i1"], "timestamp": "2026-11-20T10:00:00Z"},  # no id: NULLs not distinct
    ]
    assert send(writer, *rows)["created"] == 3

    assert send(writer, *rows) == {"created": 0, "updated": 0, "unchanged": 3, "errors": []}
    assert Impression.objects.count() == 3


def test_an_impression_without_id_or_timestamp_is_dated_now(writer):
    before = datetime.now(UTC)
    send(writer, {"user": "u1", "items": ["i1"]})
    stored = Impression.objects.get()
    assert before <= stored.shown_at <= datetime.now(UTC)
    assert (stored.recommendation_id, stored.experiment_id, stored.variant) == (None, None, None)


def test_a_foreign_recommendation_id_is_stored_without_experiment(writer):
    send(writer, {"recommendation_id": "other-system:42", "user": "u1", "items": ["i1"]})
    stored = Impression.objects.get()
    assert (stored.recommendation_id, stored.experiment_id) == ("other-system:42", None)


def test_ids_with_the_characters_of_an_array_literal_are_stored_as_sent(writer):
    odd = 'a"b\\c{d},NULL'  # quotes, a backslash, braces, a comma: visible ASCII that ids may hold

    body = send(
        writer,
        {"recommendation_id": odd, "user": "u1", "items": ["i1", "i2"], "timestamp": "2026-11-20T10:00:00Z"},
        {"recommendation_id": "NULL", "user": "u2", "items": ["i1"], "timestamp": "2026-11-20T10:00:00Z"},
    )

    assert body["created"] == 3
    assert sorted(Impression.objects.values_list("recommendation_id", flat=True)) == ["NULL", odd, odd]


def test_bad_rows_and_bad_items_are_reported_alone_and_the_rest_is_stored(writer):
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    body = send(
        writer,
        {"user": "u1", "items": ["ok-1", "bad id!", "ok-2"]},
        {"user": "u1", "items": []},
        {"user": "u1", "items": "ok-3"},
        {"user": "u1"},
        {"user": "u1", "items": ["ok-3"], "colour": "red"},
        {"user": "u1", "items": ["ok-3"], "timestamp": future},
        {"user": "u1", "items": ["ok-3"], "recommendation_id": "has space"},
        {"user": 5, "items": ["ok-3"]},
        "not an object",
        {"user": "u2", "items": ["ok-4"]},
    )

    assert body["created"] == 3
    errors = {(e["index"], e.get("item")): e["error"] for e in body["errors"]}
    assert list(errors) == [(0, "bad id!"), (1, None), (2, None), (3, None), (4, None), (5, None), (6, None),
                            (7, None), (8, None)]  # fmt: skip
    assert errors[(0, "bad id!")]["details"] == {"items": ["invalid id"]}
    assert errors[(3, None)]["details"] == {"items": ["required"]}
    assert errors[(4, None)]["details"] == {"colour": ["unknown field"]}
    assert errors[(5, None)]["details"] == {"timestamp": ["out of range"]}
    assert errors[(6, None)]["details"] == {"recommendation_id": ["1-80 visible ASCII characters"]}
    assert shown("u1") == [("ok-1", 1), ("ok-2", 3)]  # positions as displayed, the bad one skipped
    assert shown("u2") == [("ok-4", 1)]


@override_settings(RECSYS_AUTO_CREATE_ITEMS=False)
def test_unknown_items_are_rejected_one_by_one_when_items_are_not_auto_created(writer):
    ItemFactory(external_id="known")
    body = send(writer, {"user": "u1", "items": ["known", "ghost"]})

    assert body["created"] == 1
    assert [(e["index"], e["item"], e["error"]["code"]) for e in body["errors"]] == [(0, "ghost", "not_found")]
    assert not Item.objects.filter(external_id="ghost").exists()


def test_unknown_items_become_stubs_by_default(writer):
    send(writer, {"user": "new-user", "items": ["new-item"]})
    assert Item.objects.get(external_id="new-item").is_stub


def test_an_impression_of_a_month_without_partition_gets_its_partition(writer):
    assert datetime(2019, 3, 1).date() not in impression_partitions_list()

    body = send(writer, {"user": "u1", "items": ["i1"], "timestamp": "2019-03-15T12:00:00Z"})

    assert body["created"] == 1
    assert datetime(2019, 3, 1).date() in impression_partitions_list()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM recsys_impression_y2019m03")
        assert cursor.fetchone()[0] == 1


@override_settings(RECSYS_IMPRESSION_RETENTION_DAYS=30)
def test_impressions_older_than_the_retention_are_rejected(writer):
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    body = send(writer, {"user": "u1", "items": ["i1"], "timestamp": old}, {"user": "u1", "items": ["i2"]})
    assert body["created"] == 1
    assert body["errors"][0]["index"] == 0 and body["errors"][0]["id"] is None
    assert body["errors"][0]["error"]["details"] == {"timestamp": ["expired"]}


def test_too_many_shown_items_in_one_request_are_refused_whole(writer):
    rows = [{"user": f"u{k}", "items": [f"i{n}" for n in range(1_000)]} for k in range(101)]
    body = send(writer, *rows, status=413)
    assert body["error"]["code"] == "payload_too_large"
    assert Impression.objects.count() == 0


def test_a_deleted_users_impressions_disappear(writer):
    send(writer, {"user": "gone", "items": ["i1", "i2"]}, {"user": "stays", "items": ["i1"]})

    services.user_delete(external_id="gone")

    assert list(Impression.objects.values_list("user__external_id", flat=True)) == ["stays"]


def test_impressions_need_the_write_scope(reader):
    response = reader.post(URL, {"impressions": [{"user": "u1", "items": ["i1"]}]}, format="json")
    assert response.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"impressions": [{"user": "u1", "items": [None, 5, {"id": "x"}, ["i1"], "ok"], "timestamp": 17}]},
        {"impressions": [{"user": None, "items": ["i1"]}, {"user": "u1", "items": ["i1"], "recommendation_id": ""}]},
        {"impressions": [{"user": "u1", "items": ["i1"], "recommendation_id": "r" + "z" * 100}]},
        {"impressions": [{"user": "u1", "items": ["i1"], "timestamp": "0001-01-01T00:00:00Z"}]},
        {"impressions": [{"user": "u1", "items": ["i1"], "timestamp": "9999-12-31T23:59:59Z"}]},
        {"impressions": [{"user": "u\u00e9", "items": ["\u0000"]}]},
        {"impressions": [[], 3, None, "x"]},
        {"impressions": []},
    ],
)
def test_odd_rows_are_answered_row_by_row_never_with_a_server_error(writer, body):
    response = writer.post(URL, body, format="json")
    assert response.status_code == 200, response.content
    answer = response.json()
    rows = len(body["impressions"])
    assert {error["index"] for error in answer["errors"]} <= set(range(rows))
    assert answer["created"] == Impression.objects.count()
    assert bool(answer["errors"] or answer["created"]) == bool(rows)  # every row is stored or reported


@pytest.mark.parametrize("body", [{}, {"impressions": {}}, {"impressions": "x"}, {"impressions": [], "more": 1}, []])
def test_a_malformed_body_is_a_400(writer, body):
    response = writer.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
