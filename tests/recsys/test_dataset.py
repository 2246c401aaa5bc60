"""Data set export and import: a round trip restores every user, item, interaction and custom
vector; streams in chunks; bad or cut files are reported; the admin download is for superusers."""

from __future__ import annotations

import gzip
import json
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from embeddings.models import VectorSpace
from embeddings.spaces import item_vector_put
from recsys import dataset_export as export_module
from recsys.dataset_export import dataset_export
from recsys.models import EventType, HiddenItem, Interaction, Item, User
from recsys.rules.scenarios import hidden_items_add
from recsys.services import interactions_ingest, items_upsert, user_upsert

pytestmark = pytest.mark.django_db

AWKWARD = 'Quote " backslash \\ newline \n tab \t unicode ☕ \x01'


@pytest.fixture
def dataset() -> None:
    """Every kind of record, with the characters that break naive JSON and CSV handling."""
    EventType.objects.create(name="share", weight=3.0, description="shared a link", counts_as_click=True)
    EventType.objects.filter(name="view").update(weight=0.5)
    user_upsert(external_id="alice", attributes={"tier": "gold", "note": AWKWARD, "nested": {"n": [1, 2.5, None]}})
    user_upsert(external_id="bob@example.com", attributes={})
    items_upsert(
        rows=[
            {
                "id": "sku/1",
                "title": "Trail shoes",
                "text": AWKWARD,
                "categories": ["outdoor", "shoes"],
                "attributes": {"price": 89.9, "sizes": [40, 41]},
                "published_at": "2026-03-01T08:15:30.123456+00:00",
            },
            {"id": "sku-2", "title": "Hidden", "is_hidden": True},
            {"id": "sku-3"},
        ]
    )
    result = interactions_ingest(
        rows=[
            {"user": "alice", "item": "sku/1", "type": "purchase", "timestamp": "2026-03-02T10:00:00.000001Z"},
            {"user": "alice", "item": "sku-2", "type": "rating", "value": 4.5, "timestamp": "2026-03-02T11:00:00Z"},
            {"user": "bob@example.com", "item": "stub-item", "type": "share", "timestamp": "2026-03-03T00:00:00Z"},
            {"user": "carol", "item": "sku/1", "type": "view", "timestamp": "2026-03-04T00:00:00+02:00"},
        ]
    )
    assert not result.errors
    item_vector_put(item_external_id="sku/1", space="image", vector=[0.1, 0.7, 0.2])
    item_vector_put(item_external_id="sku-3", space="image", vector=[3.0, -1.0, 0.25])
    item_vector_put(item_external_id="sku-2", space="audio", vector=[1.0, 2.0])
    hidden_items_add(user_external_id="alice", items=["sku-3", "stub-item"])  # never recommend these again


def snapshot() -> dict[str, Any]:
    """Everything a data set holds, keyed by client ids (database ids change across installs)."""
    vectors = {}
    for space in VectorSpace.objects.order_by("name"):
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT i.external_id, v.embedding::real[] FROM {space.table} v JOIN recsys_item i ON i.id = v.item_id"
            )
            vectors[(space.name, space.dimensions)] = dict(cursor.fetchall())
    return {
        "event_types": list(
            EventType.objects.order_by("name").values_list(
                "name", "weight", "uses_value", "description", "counts_as_click"
            )
        ),
        "users": sorted(User.objects.values_list("external_id", "attributes")),
        "items": sorted(
            Item.objects.values_list(
                "external_id", "title", "text", "categories", "attributes", "is_hidden", "is_stub", "published_at"
            )
        ),
        "interactions": sorted(
            Interaction.objects.values_list(
                "user__external_id", "item__external_id", "event_type", "value", "weight", "timestamp"
            )
        ),
        "vectors": vectors,
        "hidden_items": sorted(HiddenItem.objects.values_list("user__external_id", "item__external_id")),
    }


def wipe() -> None:
    Interaction.objects.all().delete()
    Item.objects.all().delete()
    User.objects.all().delete()
    EventType.objects.all().delete()
    with connection.cursor() as cursor:
        for space in VectorSpace.objects.all():
            cursor.execute(f"DROP TABLE {space.table}")
    VectorSpace.objects.all().delete()


def export(path: Path) -> list[dict[str, Any]]:
    call_command("export_data", str(path), stderr=StringIO())
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def import_(path: str) -> str:
    out = StringIO()
    call_command("import_data", path, "--no-progress", stdout=out)
    return out.getvalue()


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("event_types", "users", "items", "interactions", "hidden_items"):
        assert after[key] == before[key], key
    assert before["hidden_items"]  # (the round trip carries some)
    assert after["vectors"].keys() == before["vectors"].keys()
    for space, vectors in before["vectors"].items():
        assert after["vectors"][space].keys() == vectors.keys()
        for item, vector in vectors.items():
            np.testing.assert_allclose(after["vectors"][space][item], vector, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz"])
def test_export_wipe_import_restores_identical_data(dataset, tmp_path, name):
    before = snapshot()
    records = export(tmp_path / name)
    wipe()
    assert snapshot()["items"] == []

    output = import_(str(tmp_path / name))

    assert_same(before, snapshot())
    assert "warning" not in output and "0 rejected" in output
    assert [r["kind"] for r in (records[0], records[-1])] == ["header", "end"]


def test_the_export_after_a_round_trip_is_the_same_file(dataset, tmp_path):
    first = export(tmp_path / "first.jsonl")
    wipe()
    import_(str(tmp_path / "first.jsonl"))

    second = export(tmp_path / "second.jsonl")

    def comparable(records: list[dict[str, Any]]) -> list[str]:
        kept = [r for r in records if r["kind"] not in ("header", "vector")]
        return sorted(json.dumps(r, sort_keys=True) for r in kept)

    assert comparable(second) == comparable(first)
    assert first[-1] == {
        "kind": "end",
        "counts": {"event_type": 8, "user": 3, "item": 4, "vector": 3, "interaction": 4, "hidden_item": 2},
    }


def test_records_carry_every_field_in_the_documented_shape(dataset, tmp_path):
    records = export(tmp_path / "data.jsonl")

    by_id = {r.get("id") or r.get("item"): r for r in records if r["kind"] in ("item", "user")}
    assert by_id["sku/1"] == {
        "kind": "item",
        "id": "sku/1",
        "title": "Trail shoes",
        "text": AWKWARD,
        "categories": ["outdoor", "shoes"],
        "attributes": {"price": 89.9, "sizes": [40, 41]},
        "is_hidden": False,
        "published_at": "2026-03-01T08:15:30.123456+00:00",
        "available_from": None,
        "available_until": None,
    }
    assert by_id["stub-item"] == {"kind": "item", "id": "stub-item", "stub": True}
    assert by_id["alice"]["attributes"]["note"] == AWKWARD
    rating = next(r for r in records if r["kind"] == "interaction" and r["type"] == "rating")
    assert rating == {
        "kind": "interaction",
        "user": "alice",
        "item": "sku-2",
        "type": "rating",
        "value": 4.5,
        "timestamp": "2026-03-02T11:00:00+00:00",
    }


def test_import_into_a_populated_install_changes_nothing_the_second_time(dataset, tmp_path):
    export(tmp_path / "data.jsonl")
    before = snapshot()

    output = import_(str(tmp_path / "data.jsonl"))

    assert_same(before, snapshot())
    assert "interactions: 4 rows" in output and "0 created" in output


def test_export_to_stdout_is_the_same_stream(dataset, tmp_path, capsysbinary):
    records = export(tmp_path / "data.jsonl")

    call_command("export_data", "-", stderr=StringIO())

    streamed = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert [r for r in streamed if r["kind"] != "header"] == [r for r in records if r["kind"] != "header"]


def test_export_streams_in_bounded_chunks(db, monkeypatch):
    monkeypatch.setattr(export_module, "CHUNK_BYTES", 4096)
    rows = [
        {
            "user": f"u{n % 50}",
            "item": f"i{n % 300}",
            "type": "view",
            "timestamp": f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z",
        }
        for n in range(3000)
    ]
    interactions_ingest(rows=rows)

    chunks = list(dataset_export())

    assert len(chunks) > 50 and max(len(c) for c in chunks) < 4096 + 200
    assert sum(c.count(b'"kind":"interaction"') for c in chunks) == 3000


def test_bad_lines_are_reported_and_the_rest_is_stored(db, tmp_path):
    lines = [
        {"kind": "header", "format": "recsys-dataset", "version": 1},
        {"kind": "user", "id": "ok-user", "attributes": {"a": 1}},
        {"kind": "user", "id": "bad user", "attributes": {}},
        {"kind": "user", "attributes": {}},  # no id: refused, not stored as "None"
        {"kind": "event_type", "name": "x" * 33, "weight": 1},  # longer than a name can be
        {"kind": "event_type", "name": "has space", "weight": 1},
        {"kind": "item", "id": "ok-item", "title": "Fine", "colour": "red"},
        {"kind": "item", "id": "ok-item-2", "title": "Fine"},
        {"kind": "vector", "space": "image", "item": "ghost", "vector": [1, 2]},
        {"kind": "vector", "space": "image", "item": "ok-item-2", "vector": [1, 2]},
        {"kind": "vector", "space": "image", "item": "ok-item-2", "vector": [1, 2, 3]},
        {"kind": "interaction", "user": "ok-user", "item": "ok-item-2", "type": "teleport"},
        {"kind": "interaction", "user": "ok-user", "item": "ok-item-2", "type": "view", "timestamp": 5},
        {
            "kind": "interaction",
            "user": "ok-user",
            "item": "ok-item-2",
            "type": "click",
            "timestamp": "2026-01-01T00:00:00Z",
        },
        {"kind": "spaceship"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([*map(json.dumps, lines), "{not json"]) + "\n")

    output = import_(str(path))

    assert list(User.objects.values_list("external_id", flat=True)) == ["ok-user"]
    assert list(Item.objects.values_list("external_id", flat=True)) == ["ok-item-2"]
    assert Interaction.objects.get().event_type == "click"
    assert VectorSpace.objects.get().dimensions == 2 and "holds 2-dimensional vectors" in output
    for reason in [
        "unknown field(s)",
        "does not exist",
        "unknown event type",
        "timestamp must be an ISO 8601 string",
        "invalid JSON",
        "not an object with a known kind",
        "an event type's name is 1-32 of",
    ]:
        assert reason in output
    assert "warning: no end line: the file is incomplete" in output


def test_a_file_cut_short_is_imported_as_far_as_it_goes_with_a_warning(dataset, tmp_path):
    text = b"".join(dataset_export()).decode().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(
        "\n".join(text[:-5]) + "\n"
    )  # without the end line, the two hidden items and the last two interactions
    wipe()

    output = import_(str(cut))

    assert "warning: no end line" in output and Interaction.objects.count() == 2


def test_a_file_of_another_format_is_refused(db, tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"kind": "header", "format": "gorse"}) + "\n")

    with pytest.raises(CommandError, match="not a recsys-dataset file"):
        import_(str(path))


def test_a_failed_export_leaves_no_file(db, tmp_path, monkeypatch):
    def broken() -> Any:
        yield b"{}\n"
        raise RuntimeError("database went away")

    monkeypatch.setattr("recsys.management.commands.export_data.dataset_export", broken)

    with pytest.raises(RuntimeError):
        call_command("export_data", str(tmp_path / "data.jsonl"), stderr=StringIO())
    assert list(tmp_path.iterdir()) == []


def test_superuser_downloads_the_export_from_the_admin(dataset, admin_client, tmp_path):
    records = export(tmp_path / "data.jsonl")

    response = admin_client.get("/admin/export/")

    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="recsys-')
    downloaded = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [r for r in downloaded if r["kind"] != "header"] == [r for r in records if r["kind"] != "header"]
    assert 'href="/admin/export/"' in admin_client.get("/admin/").content.decode()


def test_staff_who_are_not_superusers_cannot_download_it(db, client, django_user_model):
    staff = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    client.force_login(staff)

    assert client.get("/admin/export/").status_code == 403
    assert 'href="/admin/export/"' not in client.get("/admin/").content.decode()


def test_a_data_set_line_that_is_not_utf8_or_holds_a_huge_integer_is_refused_and_the_rest_stored(db, tmp_path):
    header = json.dumps({"kind": "header", "format": "recsys-dataset", "version": 1}).encode()
    lines = [
        b"\xef\xbb\xbf" + header,  # a BOM: the header is still read
        b'{"kind": "user", "id": "caf\xe9", "attributes": {}}',  # Latin-1, not UTF-8
        b'{"kind": "user", "id": "big", "attributes": {"n": ' + b"9" * 5_000 + b"}}",
        json.dumps({"kind": "user", "id": "fine", "attributes": {}}).encode(),
    ]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    output = import_(str(path))

    assert list(User.objects.values_list("external_id", flat=True)) == ["fine"]
    assert "not UTF-8" in output and "invalid JSON" in output
