"""Interactions and attributions never name a user or item that is gone: the writer's check under the references lock and the
delete triggers (migration 0009), exercised with two connections; the migration keeps every row."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from recsys.ingestion.events import event_rules_load, interactions_ingest
from recsys.ingestion.rules import EventArrays
from recsys.ingestion.writer import events_write
from recsys.models import Attribution, EventType, Interaction, Item, User

pytestmark = pytest.mark.django_db(transaction=True)  # a second connection must see committed rows

ORPHANS = " + ".join(
    f"""(SELECT count(*) FROM {table} x
         WHERE NOT EXISTS (SELECT 1 FROM recsys_user u WHERE u.id = x.user_id)
            OR NOT EXISTS (SELECT 1 FROM recsys_item i WHERE i.id = x.item_id))"""
    for table in ("recsys_interaction", "recsys_attribution")
)


@pytest.fixture(autouse=True)
def event_types() -> None:
    """An earlier transactional test's flush empties the seeded event types: put them back."""
    from recsys.migrations._event_type_defaults import event_types_seed

    event_types_seed(EventType)


@pytest.fixture
def other() -> Iterator[psycopg.Connection[Any]]:
    """A second session on the test database, autocommit unless it opens a transaction."""
    settings = connection.settings_dict
    conn = psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        autocommit=True,
    )
    yield conn
    conn.close()


def orphans() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {ORPHANS}")
        return int(cursor.fetchone()[0])


def event(user: str, item: str = "book", day: int = 1) -> dict[str, str]:
    return {"user": user, "item": item, "type": "view", "timestamp": f"2024-05-{day:02d}T10:00:00Z"}


def arrays(user: User, item: Item, days: int) -> EventArrays:
    micros = 1_714_557_600_000_000 + np.arange(days, dtype=np.int64) * 86_400_000_000  # from 2024-05-01 10:00
    return EventArrays(
        np.full(days, user.pk, dtype=np.int64),
        np.full(days, item.pk, dtype=np.int64),
        np.zeros(days, dtype=np.int16),
        np.full(days, np.nan),
        micros,
    )


def in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # reported to the test, which asserts on it
            out.append(exc)
        finally:
            connection.close()  # this thread's own

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_delete_waits_for_the_events_in_flight_then_removes_them_too(other: psycopg.Connection[Any]) -> None:
    # Given a user and an item, and a batch of their events written but not yet committed
    interactions_ingest(rows=[event("ann")])
    user, item = User.objects.get(external_id="ann"), Item.objects.get(external_id="book")
    with transaction.atomic():
        events_write(arrays(user, item, 5), event_rules_load(), copy=False)

        # When another session deletes the user meanwhile
        thread, out = in_thread(lambda: other.execute("DELETE FROM recsys_user WHERE id = %s", [user.pk]).rowcount)
        time.sleep(0.5)

        # Then the delete waits for the events' transaction
        assert thread.is_alive()
    thread.join(10)

    # and, once it commits, removes its events with the others: nothing refers to the deleted user
    assert out == [1]
    assert not Interaction.objects.filter(user_id=user.pk).exists()
    assert orphans() == 0


def test_events_of_a_user_deleted_while_they_wait_are_stored_for_the_user_created_again(
    other: psycopg.Connection[Any],
) -> None:
    # Given a user deleted by another session that has not committed yet
    interactions_ingest(rows=[event("bob", day=1)])
    old_id = User.objects.get(external_id="bob").pk
    other.execute("BEGIN")
    other.execute("DELETE FROM recsys_user WHERE id = %s", [old_id])

    # When a batch naming the user arrives (its id resolves to the old row) and the delete commits meanwhile
    thread, out = in_thread(lambda: interactions_ingest(rows=[event("bob", day=2), event("bob", day=3)]))
    time.sleep(0.5)
    assert thread.is_alive()  # the batch waits for the delete
    other.execute("COMMIT")
    thread.join(10)

    # Then no event is lost and none refers to the old row: the user was created again and owns both
    result = out[0]
    assert (result.created, result.errors) == (2, []), result
    bob = User.objects.get(external_id="bob")
    assert bob.pk != old_id
    assert list(
        Interaction.objects.filter(user=bob).values_list("timestamp__day", flat=True).order_by("timestamp")
    ) == [
        2,
        3,
    ]
    assert orphans() == 0


@pytest.mark.parametrize(("table", "column"), [("recsys_user", "user_id"), ("recsys_item", "item_id")])
def test_a_plain_sql_delete_removes_the_interactions_and_attributions(table: str, column: str) -> None:
    interactions_ingest(rows=[event("cat", "pen"), event("cat", "ink"), event("dan", "ink")])
    with connection.cursor() as cursor:  # an attribution of each event
        cursor.execute(
            "INSERT INTO recsys_attribution (user_id, item_id, event_type, occurred_at, weight, recommendation_id)"
            " SELECT user_id, item_id, event_type, timestamp, weight, 'r' FROM recsys_interaction"
        )
    gone = (User.objects.get(external_id="cat") if table == "recsys_user" else Item.objects.get(external_id="pen")).pk

    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [gone])

    kept = 1 if table == "recsys_user" else 2
    assert not Interaction.objects.filter(**{column: gone}).exists()
    assert Interaction.objects.count() == Attribution.objects.count() == kept
    assert orphans() == 0


def test_a_delete_under_repeatable_read_is_refused(other: psycopg.Connection[Any]) -> None:
    interactions_ingest(rows=[event("eve")])

    other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="READ COMMITTED"):
        other.execute("DELETE FROM recsys_user WHERE external_id = 'eve'")
    other.execute("ROLLBACK")

    assert User.objects.filter(external_id="eve").exists()
    assert Interaction.objects.count() == 1


def test_the_row_id_of_a_user_with_interactions_cannot_change(other: psycopg.Connection[Any]) -> None:
    interactions_ingest(rows=[event("fay")])

    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        other.execute("UPDATE recsys_user SET id = id + 1000 WHERE external_id = 'fay'")

    assert orphans() == 0


def test_the_delete_service_removes_the_users_interactions() -> None:
    from recsys.services import user_delete

    interactions_ingest(rows=[event("gus"), event("hal")])

    user_delete(external_id="gus")

    assert list(Interaction.objects.values_list("user__external_id", flat=True)) == ["hal"]
    assert orphans() == 0


def test_migrating_keeps_every_row_and_moves_the_references_to_the_writer() -> None:
    # Given the database before migration 0009, with users, items and interactions
    executor = MigrationExecutor(connection)
    executor.migrate([("recsys", "0008_admin_id_rule")])
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO recsys_user (external_id, attributes) SELECT 'u' || g, '{}' FROM generate_series(1, 6) g"
        )
        cursor.execute(
            "INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub)"
            " SELECT 'i' || g, '', '', '{}', '{}', false, true FROM generate_series(1, 3) g"
        )
        cursor.execute(
            "INSERT INTO recsys_interaction (user_id, item_id, event_type, weight, timestamp)"
            " SELECT u.id, i.id, 'view', 1, timestamptz '2024-05-01' + u.id * interval '1 day'"
            " FROM recsys_user u, recsys_item i"
        )
    before = sorted(Interaction.objects.values_list("id", "user_id", "item_id", "timestamp"))
    users = sorted(User.objects.values_list("id", "external_id"))

    # When migrating forward
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    # Then every row is kept, the interactions have no foreign keys, the id check has its `+` form
    assert sorted(Interaction.objects.values_list("id", "user_id", "item_id", "timestamp")) == before
    assert sorted(User.objects.values_list("id", "external_id")) == users
    assert len(before) == 18
    assert constraints("recsys_interaction", "f") == constraints("recsys_attribution", "f") == []
    assert constraints("recsys_user", "c") == ["CHECK (((external_id)::text ~ '^[A-Za-z0-9_.:@/-]+$'::text))"]

    # and the way back restores the foreign keys over the same rows
    executor = MigrationExecutor(connection)
    executor.migrate([("recsys", "0008_admin_id_rule")])
    assert len(constraints("recsys_interaction", "f")) == len(constraints("recsys_attribution", "f")) == 2
    assert sorted(Interaction.objects.values_list("id", "user_id", "item_id", "timestamp")) == before
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def constraints(table: str, kind: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = %s"
            " ORDER BY 1",
            [table, kind],
        )
        return [row[0] for row in cursor.fetchall()]


def test_a_fresh_month_loaded_by_a_file_leaves_out_the_events_of_a_user_deleted_meanwhile() -> None:
    from recsys.ingestion.events import interactions_load
    from recsys.ingestion.readers import json_rows_events_read
    from recsys.ingestion.rules import RawEvents

    # Given a file of a month that holds nothing yet (loaded into a table of its own, attached at the end)
    def chunks() -> Iterator[RawEvents]:
        yield json_rows_events_read([1], [event("ivy", day=1)])
        yield json_rows_events_read([2], [event("jon", day=2)])
        # When the user of the first chunk is deleted (through a connection of the reader thread's own)
        User.objects.filter(external_id="ivy").delete()
        yield json_rows_events_read([3], [event("ivy", day=3)])

    report = interactions_load(chunks=chunks())

    # Then her first event went with her, as a cascade would have taken it, and the later ones are kept
    assert (report.created, report.rejected) == (2, 0), report
    stored = sorted(Interaction.objects.values_list("user__external_id", "timestamp__day"))
    assert stored == [("ivy", 3), ("jon", 2)]
    assert orphans() == 0


def test_the_admins_deletes_wait_for_events_in_flight_and_leave_no_orphan(admin_user: Any) -> None:
    from django.test import Client

    from recsys.signals import item_deleted, user_deleted

    announced: list[str] = []  # what serving hears (its cached answers naming them go)

    def heard(sender: Any, external_id: str, **kwargs: Any) -> None:
        announced.append(external_id)

    user_deleted.connect(heard, dispatch_uid="test-admin-deletes")
    item_deleted.connect(heard, dispatch_uid="test-admin-deletes-items")

    # Given two users with events, and a batch of one of them written but not committed
    interactions_ingest(rows=[event("cat"), event("dan"), event("dan", item="pen")])
    cat, dan = User.objects.get(external_id="cat"), User.objects.get(external_id="dan")
    client = Client()
    client.force_login(admin_user)
    with transaction.atomic():
        events_write(arrays(cat, Item.objects.get(external_id="book"), 3), event_rules_load(), copy=False)

        # When an operator deletes both from the users' list (the bulk action) meanwhile
        thread, out = in_thread(
            lambda: (
                client.post(
                    "/admin/recsys/user/",
                    {"action": "delete_selected", "_selected_action": [cat.pk, dan.pk], "post": "yes"},
                ).status_code
            )
        )
        time.sleep(0.5)

        # Then the delete waits for the events' transaction
        assert thread.is_alive()
    thread.join(20)

    # and then removes every event of both: nothing refers to a deleted user
    assert out == [302]
    assert sorted(announced) == ["cat", "dan"]
    assert not User.objects.filter(pk__in=[cat.pk, dan.pk]).exists()
    assert not Interaction.objects.filter(user_id__in=[cat.pk, dan.pk]).exists()
    assert orphans() == 0

    # and an item deleted from its own page takes its events with it too
    pen = Item.objects.get(external_id="pen")
    interactions_ingest(rows=[event("eve", item="pen")])
    assert client.post(f"/admin/recsys/item/{pen.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Interaction.objects.filter(item_id=pen.pk).exists() and orphans() == 0
    assert announced[-1] == "pen"
    user_deleted.disconnect(dispatch_uid="test-admin-deletes")
    item_deleted.disconnect(dispatch_uid="test-admin-deletes-items")


def test_an_api_delete_behind_a_roll_up_gives_up_soon_instead_of_holding_ingestion(
    other: psycopg.Connection[Any], writer: Any, settings: Any
) -> None:
    # Given a user with events, and another session holding the interactions as a year's roll-up does
    settings.RECSYS_DELETE_LOCK_TIMEOUT_SECONDS = 0.5
    interactions_ingest(rows=[event("fay")])
    other.execute("BEGIN")
    other.execute("LOCK TABLE recsys_interaction IN EXCLUSIVE MODE")

    # When the API is asked to delete the user
    started = time.monotonic()
    response = writer.delete("/api/v1/users/fay")
    waited = time.monotonic() - started

    # Then it answers 503 within about the timeout (releasing the references lock that every ingest
    # batch waits for), and the user is kept
    assert response.status_code == 503 and "retry" in response.json()["error"]["message"]
    assert waited < 5
    assert User.objects.filter(external_id="fay").exists()

    # and once the roll-up ends, the same request deletes the user and their events
    other.execute("COMMIT")
    assert writer.delete("/api/v1/users/fay").status_code == 204
    assert not User.objects.filter(external_id="fay").exists() and orphans() == 0


def test_an_admin_delete_behind_a_roll_up_gives_up_soon_and_says_to_retry(
    other: psycopg.Connection[Any], admin_user: Any, settings: Any
) -> None:
    from django.test import Client

    # Given a user and an item with events, and another session holding the interactions as a year's
    # roll-up does
    settings.RECSYS_DELETE_LOCK_TIMEOUT_SECONDS = 0.5
    interactions_ingest(rows=[event("gus", item="cup")])
    gus, cup = User.objects.get(external_id="gus"), Item.objects.get(external_id="cup")
    client = Client()
    client.force_login(admin_user)
    other.execute("BEGIN")
    other.execute("LOCK TABLE recsys_interaction IN EXCLUSIVE MODE")

    # When the operator deletes the user from its page, and the item by the list's bulk action
    started = time.monotonic()
    page = client.post(f"/admin/recsys/user/{gus.pk}/delete/", {"post": "yes"}, follow=True)
    action = client.post(
        "/admin/recsys/item/",
        {"action": "delete_selected", "_selected_action": [cup.pk], "post": "yes"},
        follow=True,
    )
    waited = time.monotonic() - started

    # Then each gives up within about the timeout (no 500, not holding ingestion behind it), says why,
    # and keeps the rows
    for response in (page, action):
        assert response.status_code == 200
        assert "being reorganised" in " ".join(str(m) for m in response.context["messages"])
    assert waited < 8
    assert User.objects.filter(pk=gus.pk).exists() and Item.objects.filter(pk=cup.pk).exists()

    # and once the roll-up ends, the same delete goes through
    other.execute("COMMIT")
    assert client.post(f"/admin/recsys/user/{gus.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=gus.pk).exists() and orphans() == 0
