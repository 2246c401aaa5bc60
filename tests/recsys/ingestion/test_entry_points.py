"""The API's batches and the file imports are two doors to one engine: the same rows, sent through
either into a clean database, are stored exactly alike (users, items including stubs, events with
their value, weight and timestamp), and the same rows are rejected."""

from __future__ import annotations

import csv
import json
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.ingestion.documents import ItemRow, items_load, items_upsert
from recsys.ingestion.events import interactions_ingest, interactions_load
from recsys.ingestion.readers import csv_events_read, jsonl_events_read
from recsys.models import Interaction, Item, User

pytestmark = pytest.mark.django_db
NOW = datetime.now(UTC)
FIELDS = ["user", "item", "type", "value", "timestamp"]

moments = st.datetimes(
    min_value=datetime(1969, 12, 31), max_value=(NOW + timedelta(days=2)).replace(tzinfo=None)
).flatmap(
    lambda moment: st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]).map(
        lambda zone: moment.replace(tzinfo=zone)
    )
)
values = (
    st.none()
    | st.sampled_from([0, 0.5, 4, 10, 10.000001, -1, 1e9, 2e9, -2e9, 1e-300, -5e-324])
    | st.floats(min_value=-20, max_value=20, allow_nan=False)
)
events = st.fixed_dictionaries(
    {
        "user": st.sampled_from(["u1", "u2", "user:3", "bad id!"]),
        "item": st.sampled_from(["known", "i1", "i/2", "popular"]),
        "type": st.sampled_from(["view", "purchase", "dislike", "rating", "teleport"]),
        "value": values,
        "timestamp": moments.map(datetime.isoformat) | st.just("2026-01-01T10:00:00"),
    }
)
flat = st.lists(events, min_size=1, max_size=15)


def stored() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "users": list(User.objects.order_by("external_id").values_list("external_id", "attributes")),
        "items": list(
            Item.objects.order_by("external_id").values_list(
                "external_id", "title", "text", "categories", "attributes", "is_hidden", "is_stub", "published_at"
            )
        ),
        "interactions": list(
            Interaction.objects.order_by(
                "user__external_id", "item__external_id", "event_type", "timestamp"
            ).values_list("user__external_id", "item__external_id", "event_type", "value", "weight", "timestamp")
        ),
    }


def clean_database() -> None:
    Interaction.objects.all().delete()
    Item.objects.all().delete()
    User.objects.all().delete()
    Item.objects.create(external_id="known", title="Known", categories=["a"])


def through_the_api(rows: list[dict[str, Any]], create_items: bool) -> tuple[dict[str, Any], set[int]]:
    clean_database()
    result = interactions_ingest(rows=rows, auto_create_items=create_items)
    return stored(), {error["index"] for error in result.errors}


def through_a_file(rows: list[dict[str, Any]], create_items: bool, form: str) -> tuple[dict[str, Any], set[int]]:
    clean_database()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"events.{form}"
        if form == "jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            chunks = jsonl_events_read(path)
        else:
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(FIELDS)
                writer.writerows(
                    [
                        [
                            "" if row[name] is None else repr(row[name]) if name == "value" else row[name]
                            for name in FIELDS
                        ]
                        for row in rows
                    ]
                )
            chunks = csv_events_read(path)
        report = interactions_load(chunks=chunks, create_items=create_items)
    first_line = 1 if form == "jsonl" else 2
    return stored(), {int(example.split(":")[0].removeprefix("line ")) - first_line for example in report.examples}


@given(rows=flat, create_items=st.booleans(), form=st.sampled_from(["jsonl", "csv"]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_same_events_through_the_api_or_a_file_are_stored_alike(rows, create_items, form):
    by_api, rejected_by_api = through_the_api(rows, create_items)
    by_file, rejected_by_file = through_a_file(rows, create_items, form)

    assert by_file == by_api
    assert rejected_by_file == rejected_by_api


items = st.lists(
    st.builds(
        ItemRow,
        external_id=st.sampled_from(["known", "i1", "i2", "bad id!"]),
        title=st.text(max_size=20),
        text=st.text(max_size=40),
        categories=st.lists(st.text(max_size=10), max_size=3),
    ),
    min_size=1,
    max_size=10,
)


@given(rows=items)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_same_items_through_the_api_or_a_file_are_stored_alike(rows):
    clean_database()
    interactions_ingest(rows=[{"user": "u", "item": "i2", "type": "view"}])  # a stub, to be filled
    items_upsert(rows=[{"id": row.external_id, **row.fields()} for row in rows])
    by_api = stored()["items"]
    clean_database()
    interactions_ingest(rows=[{"user": "u", "item": "i2", "type": "view"}])
    items_load(rows=rows)

    assert stored()["items"] == by_api
