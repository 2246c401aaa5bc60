"""Seed the default event types and weights of API.md (operators edit them in the admin)."""

from __future__ import annotations

from django.db import migrations

from recsys.migrations._event_type_defaults import DEFAULTS


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    EventType = apps.get_model("recsys", "EventType")
    for name, weight, uses_value, description in DEFAULTS:
        EventType.objects.get_or_create(
            name=name, defaults={"weight": weight, "uses_value": uses_value, "description": description}
        )


class Migration(migrations.Migration):
    dependencies = [("recsys", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
