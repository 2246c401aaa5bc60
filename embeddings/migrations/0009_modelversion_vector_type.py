"""A model version records whether its tables store vector or halfvec; existing versions are vector."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("embeddings", "0007_ranking_artifacts"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="vector_type",
            field=models.CharField(
                choices=[("vector", "vector"), ("halfvec", "halfvec")], default="vector", editable=False, max_length=10
            ),
        ),
    ]
