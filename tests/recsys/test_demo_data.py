"""generate_demo_data: a deterministic, idempotent synthetic catalog where text and co-occurrence carry topics."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from recsys.management.commands.generate_demo_data import EVENT_MIX, GENERAL_WORDS, TITLE_EDITS, TOPICS
from recsys.models import EventType, Interaction, Item, User

pytestmark = pytest.mark.django_db
SMALL = ["--items", "240", "--users", "60", "--interactions", "6000", "--topics", "6", "--end", "2026-01-31"]


def generate(*args: str) -> str:
    out = StringIO()
    call_command("generate_demo_data", *SMALL, *args, "--no-progress", stdout=out)
    return out.getvalue()


def snapshot() -> tuple[list[Any], list[Any], list[Any]]:
    items = Item.objects.order_by("external_id").values_list("external_id", "title", "text", "categories")
    users = User.objects.order_by("external_id").values_list("external_id", "attributes")
    events = Interaction.objects.order_by("user__external_id", "item__external_id", "event_type", "timestamp")
    return (
        list(items),
        list(users),
        list(events.values_list("user__external_id", "item__external_id", "event_type", "value", "timestamp")),
    )


def test_the_same_seed_generates_the_same_catalog_users_and_events() -> None:
    generate("--seed", "7")
    first = snapshot()
    Interaction.objects.all().delete()
    Item.objects.all().delete()
    User.objects.all().delete()

    generate("--seed", "7")

    assert snapshot() == first


def test_another_seed_generates_other_events() -> None:
    generate("--seed", "7")
    first = snapshot()
    Interaction.objects.all().delete()

    generate("--seed", "8")

    assert snapshot()[2] != first[2]


def test_rerunning_with_the_same_seed_duplicates_nothing() -> None:
    generate("--seed", "7")
    first = snapshot()

    output = generate("--seed", "7")

    assert snapshot() == first
    assert "interactions: 6,000 rows" in output
    assert output.count("0 created, 0 updated") == 3


def test_ids_are_zero_padded_and_every_event_is_stored() -> None:
    generate()

    assert Item.objects.filter(external_id="item-000001").exists()
    assert User.objects.filter(external_id="user-000060").exists()
    assert (Item.objects.count(), User.objects.count()) == (240 + 3, 60)  # 3 re-listings, one per 100
    assert Interaction.objects.count() > 5_990  # a few random draws may repeat one (user, item, type, time)


def test_users_mostly_interact_with_items_of_their_preferred_topics() -> None:
    generate()

    rows = Interaction.objects.values_list("user__attributes", "item__categories")
    in_topic = sum(bool(set(user["preferred_topics"]) & set(categories)) for user, categories in rows)

    assert in_topic / len(rows) > 0.8


def test_item_text_is_drawn_mostly_from_its_topic_vocabulary() -> None:
    generate()

    originals = Item.objects.exclude(external_id__endswith="-relisted")
    for title, text, categories in originals.values_list("title", "text", "categories"):
        words = text.rstrip(".").lower().split()
        assert sum(word in TOPICS[categories[0]] for word in words) / len(words) > 0.4
        assert all(word.lower() in TOPICS[categories[0]] for word in title.split()[:3])
        assert title.split()[-1].lower() in GENERAL_WORDS


def test_one_item_in_a_hundred_is_re_listed_with_an_edited_title_and_the_same_text() -> None:
    generate()

    relisted = Item.objects.filter(external_id__endswith="-relisted").order_by("external_id")
    assert [item.external_id for item in relisted] == [
        "item-000001-relisted",
        "item-000101-relisted",
        "item-000201-relisted",
    ]
    for copy in relisted:
        original = Item.objects.get(external_id=copy.external_id.removesuffix("-relisted"))
        assert (copy.text, copy.categories) == (original.text, original.categories)
        assert copy.title != original.title and copy.title in {edit.format(original.title) for edit in TITLE_EDITS}
        assert not copy.interactions.exists()


def test_popularity_is_skewed_within_a_topic() -> None:
    generate()

    counts = Counter(Interaction.objects.filter(item__categories__0="cooking").values_list("item_id", flat=True))
    ranked = [n for _, n in counts.most_common()]

    assert ranked[0] > 5 * ranked[len(ranked) // 2]


def test_event_types_are_mixed_and_weighted_and_only_ratings_carry_values() -> None:
    generate()

    kinds = Counter(Interaction.objects.values_list("event_type", flat=True))
    assert set(kinds) == set(EVENT_MIX)
    assert kinds.most_common(1)[0][0] == "view"
    types = {t.name: t for t in EventType.objects.all()}
    for event in Interaction.objects.iterator():
        rule = types[event.event_type]
        assert event.weight == (rule.weight * event.value if rule.uses_value else rule.weight)
        assert (event.value is not None) == (event.event_type == "rating")
        assert event.value is None or 1.0 <= event.value <= 5.0


def test_events_spread_over_the_ninety_days_before_the_end_date() -> None:
    generate()

    stamps = list(Interaction.objects.values_list("timestamp", flat=True))
    end = datetime(2026, 1, 31, tzinfo=UTC)
    assert end - timedelta(days=90) < min(stamps) < end - timedelta(days=85)
    assert end - timedelta(days=5) < max(stamps) <= end


def test_the_demo_refuses_to_run_without_its_event_types() -> None:
    EventType.objects.filter(name="like").delete()

    with pytest.raises(Exception, match="needs the event types"):
        generate()
