"""Limits that hold through both doors: non-finite numbers in attributes, the range of a rating."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings

from recsys.models import Interaction, Item, User

pytestmark = pytest.mark.django_db
OUT_OF_RANGE = {"value": ["out of range"]}


def post_json(client, url: str, text: str):
    return client.generic("POST", url, data=text, content_type="application/json")


def put_json(client, url: str, text: str):
    return client.generic("PUT", url, data=text, content_type="application/json")


def import_file(path: Path, text: str) -> str:
    path.write_text(text)
    out = StringIO()
    call_command("import_interactions", str(path), "--no-progress", stdout=out)
    return out.getvalue()


# ---- 1e999 in attributes (issue 15, finding 5) ----------------------------------------------------


def test_an_item_whose_attributes_hold_1e999_is_rejected_and_the_batchs_other_rows_are_stored(writer):
    body = '{"items":[{"id":"okrow","title":"fine"},{"id":"fltrow","attributes":{"x":1e999}}]}'

    response = post_json(writer, "/api/v1/items/batch", body)

    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["created"] == 1
    assert [(e["index"], e["id"]) for e in answer["errors"]] == [(1, "fltrow")]
    assert answer["errors"][0]["error"]["details"] == {"attributes": ["not a finite number"]}
    assert writer.get("/api/v1/items/okrow").status_code == 200
    assert not Item.objects.filter(external_id="fltrow").exists()


@pytest.mark.parametrize("attributes", ['{"x": 1e999}', '{"deep": [{"y": -1e999}]}'])
def test_putting_an_item_or_a_user_with_a_non_finite_attribute_is_a_400(writer, attributes):
    item = put_json(writer, "/api/v1/items/book", f'{{"title": "t", "attributes": {attributes}}}')
    user = put_json(writer, "/api/v1/users/alice", f'{{"attributes": {attributes}}}')

    for response in (item, user):
        assert response.status_code == 400, response.content
        assert response.json()["error"]["details"] == {"attributes": ["not a finite number"]}
    assert not Item.objects.exists() and not User.objects.exists()


# ---- the range of a rating (issue 15, finding 6) --------------------------------------------------


def test_a_rating_outside_the_configured_range_is_rejected_by_the_api_and_the_others_stored(writer):
    rows = [
        {"user": "u", "item": "a", "type": "rating", "value": 4},
        {"user": "u", "item": "b", "type": "rating", "value": 1_000_000_000},
        {"user": "u", "item": "c", "type": "rating", "value": -1},
    ]

    answer = post_json(writer, "/api/v1/interactions", json.dumps({"interactions": rows})).json()

    assert answer["created"] == 1
    assert [(e["index"], e["error"]["details"]) for e in answer["errors"]] == [(1, OUT_OF_RANGE), (2, OUT_OF_RANGE)]
    assert "between 0 and 10" in answer["errors"][0]["error"]["message"]
    assert list(Interaction.objects.values_list("item__external_id", "value")) == [("a", 4.0)]


def test_a_rating_outside_the_configured_range_is_rejected_by_a_file_import(tmp_path):
    text = "user,item,type,value\nu,a,rating,4\nu,b,rating,1000000000\n"

    output = import_file(tmp_path / "events.csv", text)

    assert "line 3: value of this event type must lie between 0 and 10 ('1000000000.0')" in output
    assert list(Interaction.objects.values_list("item__external_id", "value")) == [("a", 4.0)]


@override_settings(RECSYS_RATING_MIN=-5.0, RECSYS_RATING_MAX=100.0)
def test_the_rating_range_comes_from_the_settings(writer, tmp_path):
    rows = [
        {"user": "u", "item": "a", "type": "rating", "value": 100},
        {"user": "u", "item": "b", "type": "rating", "value": -6},
    ]
    answer = post_json(writer, "/api/v1/interactions", json.dumps({"interactions": rows})).json()
    output = import_file(tmp_path / "events.csv", "user,item,type,value\nv,a,rating,-5\nv,b,rating,101\n")

    assert (answer["created"], [e["index"] for e in answer["errors"]]) == (1, [1])
    assert "1 created" in output and "between -5 and 100" in output
