"""The ranking stage and the cold-item map of each collaborative version; version item tables get
a ``mapped`` column (rows placed by the content map, replaced at the next retrain)."""

import django.db.models.deletion
from django.db import migrations, models


def mapped_columns_add(apps, schema_editor):  # type: ignore[no-untyped-def]
    from embeddings.vectors import tables

    versions = apps.get_model("embeddings", "ModelVersion").objects.filter(kind="collaborative", has_tables=True)
    for version_id in versions.values_list("pk", flat=True):
        tables.mapped_column_add(version_id)


class Migration(migrations.Migration):
    dependencies = [
        ("embeddings", "0006_embedding_map"),
    ]

    operations = [
        migrations.CreateModel(
            name="VersionArtifacts",
            fields=[
                (
                    "version",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="artifacts",
                        serialize=False,
                        to="embeddings.modelversion",
                    ),
                ),
                ("content_map", models.BinaryField(blank=True, editable=False, null=True)),
                ("ranker", models.TextField(blank=True, editable=False)),
                ("ranking_state", models.BinaryField(blank=True, editable=False, null=True)),
                ("ranking", models.JSONField(blank=True, default=dict)),
                (
                    "ranking_used",
                    models.BooleanField(default=False, help_text="The ranker beat the best single source."),
                ),
                (
                    "content_version",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="embeddings.modelversion",
                    ),
                ),
            ],
        ),
        migrations.RunPython(mapped_columns_add, migrations.RunPython.noop),
    ]
