"""Seed the default event types and weights of API.md (operators edit them in the admin)."""

from __future__ import annotations

from django.db import migrations

DEFAULTS = [
    ("view", 1.0, False, "Saw the item"),
    ("click", 2.0, False, "Opened the item"),
    ("add_to_cart", 4.0, False, "Put the item in a cart"),
    ("purchase", 8.0, False, "Bought the item"),
    ("like", 4.0, False, "Explicitly liked the item"),
    ("dislike", -4.0, False, "Explicitly disliked the item (a negative signal)"),
    ("rating", 1.0, True, "Rated the item; the weight is the rating value"),
]


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    EventType = apps.get_model("recsys", "EventType")
    for name, weight, uses_value, description in DEFAULTS:
        EventType.objects.get_or_create(
            name=name, defaults={"weight": weight, "uses_value": uses_value, "description": description}
        )


class Migration(migrations.Migration):
    dependencies = [("recsys", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
