"""Seed the default event types and weights of API.md (operators edit them in the admin)."""

from __future__ import annotations

from django.db import migrations

from recsys.migrations._event_type_defaults import event_types_seed


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    event_types_seed(apps.get_model("recsys", "EventType"), schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [("recsys", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
