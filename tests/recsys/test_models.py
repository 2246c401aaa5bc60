"""Constraints the database itself enforces, whatever code writes to it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import ProtectedError

from recsys.models import EventType, Interaction, Item, User
from tests.factories import InteractionFactory, ItemFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_default_event_types_and_weights_are_seeded():
    weights = dict(EventType.objects.values_list("name", "weight"))

    assert weights == {"view": 1, "click": 2, "add_to_cart": 4, "purchase": 8, "like": 4, "dislike": -4, "rating": 1}
    assert EventType.objects.get(name="rating").uses_value
    assert not EventType.objects.exclude(name="rating").filter(uses_value=True).exists()


@pytest.mark.parametrize("model", [User, Item])
def test_external_ids_are_unique(model):
    model.objects.create(external_id="same")

    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.create(external_id="same")


ROW_INSERT = {
    "user": "INSERT INTO recsys_user (external_id, attributes) VALUES (%s, '{}')",
    "item": "INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub)"
    " VALUES (%s, '', '', '{}', '{}', false, true)",
}


@pytest.mark.parametrize("model", ["user", "item"])
@pytest.mark.parametrize("bad", ["", "with space", "a,b", "é"])
def test_database_rejects_malformed_external_ids(model, bad):
    with pytest.raises(IntegrityError, match="external_id_format"), transaction.atomic(), connection.cursor() as c:
        c.execute(ROW_INSERT[model], [bad])


@pytest.mark.parametrize("model", ["user", "item"])
def test_database_holds_ids_to_128_characters(model):
    """The CHECK's `+` leaves the length to the column (recsys.ids.STORED_ID_PATTERN)."""
    with connection.cursor() as cursor:
        cursor.execute(ROW_INSERT[model], ["x" * 128])

    with pytest.raises(DataError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ROW_INSERT[model], ["x" * 129])


def test_same_event_twice_violates_the_unique_key():
    event = InteractionFactory(timestamp=datetime(2026, 1, 1, tzinfo=UTC))

    with pytest.raises(IntegrityError), transaction.atomic():
        Interaction.objects.create(
            user=event.user, item=event.item, event_type=event.event_type, weight=1, timestamp=event.timestamp
        )


def test_event_types_in_use_cannot_be_deleted():
    InteractionFactory(event_type="view")

    with pytest.raises(ProtectedError):
        EventType.objects.get(name="view").delete()

    EventType.objects.get(name="purchase").delete()
    assert EventType.objects.filter(name="view").exists()


def test_deleting_a_user_cascades_to_interactions_in_the_database():
    user = UserFactory()
    InteractionFactory.create_batch(2, user=user)

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM recsys_user WHERE id = %s", [user.pk])

    assert not Interaction.objects.exists()


def test_history_and_popularity_indexes_exist():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'recsys_interaction'")
        names = {row[0] for row in cursor.fetchall()}

    assert {"interaction_user_history", "interaction_item_time", "interaction_unique_event"} <= names


def test_search_vector_weights_title_above_text():
    ItemFactory(external_id="a", title="Volcano", text="a film")
    ItemFactory(external_id="b", title="A film", text="about a volcano")

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT external_id FROM recsys_item WHERE search_vector @@ plainto_tsquery('english', 'volcano') "
            "ORDER BY ts_rank(search_vector, plainto_tsquery('english', 'volcano')) DESC"
        )
        ranked = [row[0] for row in cursor.fetchall()]

    assert ranked == ["a", "b"]


def test_vector_extension_is_installed():
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()

    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 6)
