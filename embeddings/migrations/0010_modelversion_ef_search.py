"""A model version records the HNSW ef_search chosen for it when it was trained (None: the setting's)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("embeddings", "0009_modelversion_vector_type"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="ef_search",
            field=models.PositiveIntegerField(blank=True, editable=False, null=True),
        ),
    ]
