"""Bulk imports: MovieLens folders and interaction files, rejected rows, idempotent re-runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from recsys.ingestion.events import interactions_ingest, interactions_load
from recsys.ingestion.readers import csv_events_read, json_rows_events_read
from recsys.ingestion.rules import RawEvents
from recsys.models import EventType, Interaction, Item, User
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, "--no-progress", stdout=out)
    return out.getvalue()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def stored_events() -> list[tuple[Any, ...]]:
    return list(
        Interaction.objects.order_by("user__external_id", "item__external_id", "event_type", "timestamp").values_list(
            "user__external_id", "item__external_id", "event_type", "value", "weight", "timestamp"
        )
    )


def stored_items() -> list[tuple[Any, ...]]:
    return list(Item.objects.order_by("external_id").values_list("external_id", "title", "text", "categories"))


@pytest.fixture
def latest_folder(tmp_path: Path) -> Path:
    """A tiny ml-latest-small: two movies, three ratings, tags given twice in different case."""
    write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Heat, The (1995)",(no genres listed)\n',
    )
    write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5.0,964982224\n",
    )
    write(
        tmp_path / "tags.csv",
        "userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n3,1,fun,1445714996\n4,1,Pixar,1445714997\n",
    )
    return tmp_path


# ---- import_movielens ------------------------------------------------------------------------


def test_movielens_movies_become_items_with_genres_as_categories_and_tags_in_the_text(latest_folder: Path) -> None:
    run("import_movielens", str(latest_folder))

    toy_story = Item.objects.get(external_id="1")
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.categories == ["Adventure", "Animation"]
    assert toy_story.text == "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun"
    assert not toy_story.is_stub
    heat = Item.objects.get(external_id="2")
    assert (heat.title, heat.categories, heat.text) == ("Heat, The (1995)", [], "Heat, The (1995)")


def test_movielens_ratings_become_rating_events_weighted_by_their_value(latest_folder: Path) -> None:
    EventType.objects.filter(name="rating").update(weight=2.0)

    output = run("import_movielens", str(latest_folder))

    assert stored_events() == [
        ("1", "1", "rating", 4.0, 8.0, datetime(2000, 7, 30, 18, 45, 3, tzinfo=UTC)),
        ("1", "2", "rating", 3.5, 7.0, datetime(2000, 7, 30, 18, 20, 47, tzinfo=UTC)),
        ("2", "1", "rating", 5.0, 10.0, datetime(2000, 7, 30, 18, 37, 4, tzinfo=UTC)),
    ]
    assert sorted(User.objects.values_list("external_id", flat=True)) == ["1", "2"]
    assert "ratings: 3 rows" in output
    assert "rows/s" in output


def test_movielens_limit_imports_only_the_first_ratings(latest_folder: Path) -> None:
    run("import_movielens", str(latest_folder), "--limit", "2")

    assert Interaction.objects.count() == 2
    assert Item.objects.count() == 2


def test_classic_ml100k_files_give_genres_from_flags_and_tab_separated_ratings(tmp_path: Path) -> None:
    write(tmp_path / "u.genre", "unknown|0\nAction|1\nComedy|2\n\n")
    write(
        tmp_path / "u.item",
        "1|Toy Story (1995)|01-Jan-1995||http://example.com/1|0|0|1\n"
        "2|Café Society (1995)|01-Jan-1995||http://example.com/2|1|1|1\n",
        encoding="latin-1",
    )
    write(tmp_path / "u.data", "196\t1\t3\t881250949\n186\t2\t5\t891717742\n")

    run("import_movielens", str(tmp_path))

    assert stored_items() == [
        ("1", "Toy Story (1995)", "Toy Story (1995). Genres: Comedy", ["Comedy"]),
        ("2", "Café Society (1995)", "Café Society (1995). Genres: Action, Comedy", ["Action", "Comedy"]),
    ]
    assert [(user, item, value) for user, item, _, value, _, _ in stored_events()] == [
        ("186", "2", 5.0),
        ("196", "1", 3.0),
    ]
    assert Interaction.objects.get(user__external_id="196").timestamp == datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC)


def test_rerunning_a_movielens_import_creates_and_changes_nothing(latest_folder: Path) -> None:
    run("import_movielens", str(latest_folder))
    items, events = stored_items(), stored_events()
    changed_at = dict(Item.objects.values_list("external_id", "content_changed_at"))

    output = run("import_movielens", str(latest_folder))

    assert (stored_items(), stored_events()) == (items, events)
    assert dict(Item.objects.values_list("external_id", "content_changed_at")) == changed_at
    assert "movies: 2 rows" in output and "0 created, 0 updated, 2 unchanged" in output
    assert "ratings: 3 rows" in output and "0 created, 0 updated, 3 unchanged" in output


def test_a_folder_without_movielens_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="neither"):
        run("import_movielens", str(tmp_path))


# ---- import_interactions ---------------------------------------------------------------------

CSV_WITH_BAD_ROWS = """user,item,type,value,timestamp
alice,book-1,view,,2024-01-01T10:00:00Z
bad id!,book-1,view,,2024-01-01T10:00:00Z
alice,book-1,teleport,,2024-01-01T10:00:00Z
alice,book-2,rating,,2024-01-01T10:00:00Z
alice,book-2,rating,lots,2024-01-01T10:00:00Z
alice,book-2,click,,yesterday
alice,book-2,click,,2024-01-01T10:00:00
bob,book-3,rating,4.5,1704103200
alice,book-2
"""


def test_bad_csv_rows_are_rejected_with_their_line_and_reason_while_good_rows_are_stored(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", CSV_WITH_BAD_ROWS)

    output = run("import_interactions", str(path))

    assert stored_events() == [
        ("alice", "book-1", "view", None, 1.0, datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("bob", "book-3", "rating", 4.5, 4.5, datetime(2024, 1, 1, 10, tzinfo=UTC)),
    ]
    assert "9 rows" in output and "2 created" in output and "7 rejected" in output
    for line in [
        "line 3: invalid user id ('bad id!')",
        "line 4: unknown event type ('teleport')",
        "line 5: this event type needs a value ('rating')",
        "line 6: value must be a finite number ('lots')",
        "line 7: invalid timestamp ('yesterday')",
        "line 8: timestamp needs a time zone ('2024-01-01T10:00:00')",
        "line 10: expected 5 fields ('got 2')",
    ]:
        assert line in output


def test_unknown_event_types_are_rejected_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv", "user,item,type\nalice,book-1,teleport\nbob,book-1,teleport\ncarol,book-1,like\n"
    )

    output = run("import_interactions", str(path))

    assert [row[:3] for row in stored_events()] == [("carol", "book-1", "like")]
    assert "rejected 2 rows: 2 unknown event type" in output
    assert not User.objects.filter(external_id__in=["alice", "bob"]).exists()


def test_jsonl_rows_follow_the_api_rules(tmp_path: Path) -> None:
    rows = [
        {"user": "alice", "item": "book-1", "type": "purchase", "timestamp": "2024-05-01T12:00:00+02:00"},
        {"user": "alice", "item": "book-1", "type": "rating", "value": 4, "timestamp": "2024-05-01T12:00:00Z"},
        {"user": "bob", "item": "book-1", "type": "like", "colour": "red"},
        {"user": "bob", "item": "book-1", "type": "rating", "value": "4"},
        {"user": "bob", "item": "book-1", "type": "view", "timestamp": 1714564800},
    ]
    text = "\n".join([*(json.dumps(row) for row in rows[:2]), "not json", *(json.dumps(row) for row in rows[2:])])
    path = write(tmp_path / "events.jsonl", text + "\n\n")

    output = run("import_interactions", str(path))

    assert stored_events() == [
        ("alice", "book-1", "purchase", None, 8.0, datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("alice", "book-1", "rating", 4.0, 4.0, datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ]
    assert "line 3: invalid JSON" in output
    assert "line 4: unknown field(s) ('colour')" in output
    assert "line 5: value must be a finite number ('4')" in output
    assert "line 6: timestamp must be an ISO 8601 string ('1714564800')" in output


def test_events_without_a_timestamp_get_the_import_time(tmp_path: Path) -> None:
    path = write(tmp_path / "events.ndjson", '{"user": "alice", "item": "book-1", "type": "view"}\n')
    before = datetime.now(UTC)

    run("import_interactions", str(path))

    assert before <= Interaction.objects.get().timestamp <= datetime.now(UTC)


def test_unknown_items_are_created_as_stubs_by_default(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user,item,type\nalice,ghost,view\n")

    output = run("import_interactions", str(path))

    assert Item.objects.get(external_id="ghost").is_stub
    assert "new users 1, new stub items 1" in output


def test_no_create_items_rejects_rows_whose_item_does_not_exist(tmp_path: Path) -> None:
    ItemFactory(external_id="book-1")
    path = write(tmp_path / "events.csv", "user,item,type\nalice,book-1,view\nalice,ghost,view\n")

    output = run("import_interactions", str(path), "--no-create-items")

    assert [row[:3] for row in stored_events()] == [("alice", "book-1", "view")]
    assert not Item.objects.filter(external_id="ghost").exists()
    assert "line 3: unknown item ('ghost')" in output


def test_rerunning_an_interaction_import_duplicates_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", CSV_WITH_BAD_ROWS)
    run("import_interactions", str(path))
    first = stored_events()

    output = run("import_interactions", str(path))

    assert stored_events() == first
    assert "0 created, 0 updated, 2 unchanged, 7 rejected" in output


def test_a_changed_value_updates_the_stored_event_and_a_repeated_row_keeps_the_last(tmp_path: Path) -> None:
    header = "user,item,type,value,timestamp\n"
    write(tmp_path / "first.csv", header + "alice,book-1,rating,3,1704103200\n")
    write(tmp_path / "second.csv", header + "alice,book-1,rating,4,1704103200\nalice,book-1,rating,5,1704103200\n")
    run("import_interactions", str(tmp_path / "first.csv"))

    output = run("import_interactions", str(tmp_path / "second.csv"))

    assert [row[3:5] for row in stored_events()] == [(5.0, 5.0)]
    assert "0 created, 1 updated, 1 unchanged" in output


def test_a_csv_header_without_the_required_columns_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user,item,kind\nalice,book-1,view\n")

    with pytest.raises(CommandError, match="unknown CSV column"):
        run("import_interactions", str(path))


def test_a_file_of_unknown_format_needs_the_format_option(tmp_path: Path) -> None:
    path = write(tmp_path / "events.txt", "user,item,type\nalice,book-1,view\n")

    with pytest.raises(CommandError, match="--format"):
        run("import_interactions", str(path))
    run("import_interactions", str(path), "--format", "csv")

    assert Interaction.objects.count() == 1


def test_chunks_report_rejected_rows_by_their_file_line(tmp_path: Path) -> None:
    rows = [f"user-{n},item-{n},{'view' if n % 3 else 'teleport'}" for n in range(7)]
    path = write(tmp_path / "events.csv", "user,item,type\n" + "\n".join(rows) + "\n")

    report = interactions_load(chunks=csv_events_read(path, chunk_rows=2))

    assert (report.rows, report.created, report.rejected) == (7, 4, 3)
    assert report.examples == [
        "line 2: unknown event type ('teleport')",
        "line 5: unknown event type ('teleport')",
        "line 8: unknown event type ('teleport')",
    ]


@pytest.mark.django_db(transaction=True)  # the reader thread deletes through a connection of its own
def test_a_user_deleted_while_their_file_is_imported_is_created_again_for_the_later_chunks() -> None:
    from recsys.migrations._event_type_defaults import event_types_seed
    from recsys.models import EventType

    event_types_seed(EventType)  # an earlier transactional test's flush emptied them
    interactions_ingest(rows=[{"user": "carol", "item": "book-1", "type": "view", "timestamp": "2024-03-05T10:00:00Z"}])

    def event(user: str, day: int) -> dict[str, str]:
        return {"user": user, "item": "book-1", "type": "view", "timestamp": f"2024-03-{day:02d}T10:00:00Z"}

    def chunks() -> Iterator[RawEvents]:
        yield json_rows_events_read([1], [event("alice", 1)])
        yield json_rows_events_read([2], [event("bob", 2)])
        User.objects.filter(external_id="alice").delete()  # after chunk 1 stored, before chunk 3 is
        yield json_rows_events_read([3], [event("alice", 3)])

    report = interactions_load(chunks=chunks())

    assert (report.created, report.rejected) == (3, 0), (
        report.errors
    )  # alice (cascaded away with her), bob, alice again
    assert [row[:2] for row in stored_events()] == [("alice", "book-1"), ("bob", "book-1"), ("carol", "book-1")]
    assert Interaction.objects.get(user__external_id="alice").timestamp == datetime(2024, 3, 3, 10, tzinfo=UTC)


def test_a_jsonl_line_that_is_not_utf8_or_holds_a_huge_integer_is_refused_and_the_rest_stored(tmp_path: Path) -> None:
    good = {"user": "alice", "item": "book-1", "type": "purchase", "timestamp": "2024-05-01T12:00:00Z"}
    lines = [
        b"\xef\xbb\xbf" + json.dumps(good).encode(),  # a BOM before the first line
        b'{"user": "bob\xff", "item": "book-1", "type": "purchase"}',  # a byte that is not UTF-8
        b'{"user": "carol", "item": "book-1", "type": "rating", "value": ' + b"9" * 5_000 + b"}",
        json.dumps({**good, "user": "dave"}).encode(),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    output = run("import_interactions", str(path))

    assert sorted(row[0] for row in stored_events()) == ["alice", "dave"]
    assert "line 2: not UTF-8" in output and "line 3: invalid JSON" in output


def test_a_csv_row_that_is_not_utf8_is_refused_and_the_rest_stored(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(
        b"user,item,type,value,timestamp\n"
        b"alice,book-1,purchase,,2024-05-01T12:00:00Z\n"
        b"caf\xe9,book-1,purchase,,2024-05-01T12:00:00Z\n"  # Latin-1, not UTF-8
        b"dave,book-1,purchase,,2024-05-01T12:00:00Z\n"
    )

    output = run("import_interactions", str(path))

    assert sorted(row[0] for row in stored_events()) == ["alice", "dave"]
    assert "line 3: not UTF-8" in output


@pytest.fixture
def announced() -> Iterator[list[str]]:
    """The domain signals sent, by name, as the answer cache and popular rankings hear them."""
    from recsys import signals

    sent: list[str] = []
    names = ("items_stored", "interactions_imported", "interactions_stored")
    receivers = {name: (lambda sender, _name=name, **kwargs: sent.append(_name)) for name in names}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"test-{name}")
    yield sent
    for name in names:
        getattr(signals, name).disconnect(dispatch_uid=f"test-{name}")


def test_imports_announce_what_they_stored_so_cached_answers_go_stale(tmp_path: Path, announced) -> None:
    # before: a file import sent nothing, and cached answers kept old categories, hidden flags and
    # histories for up to 5 minutes
    path = write(tmp_path / "events.csv", "user,item,type,timestamp\nalice,book-1,view,1704103200\n")
    run("import_interactions", str(path))
    assert announced == ["interactions_imported"]

    announced.clear()
    run("import_interactions", str(path))  # nothing new: nothing to announce
    assert announced == []
