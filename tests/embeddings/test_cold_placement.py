"""Cold items in the collaborative space: the run fits the content map, new items with text get a
mapped vector in the active version (marked mapped) and reach personalised and similar lists."""

from __future__ import annotations

import pytest
from django.db import connection
from psycopg import sql

from embeddings import content, services
from embeddings.cold_items import SHRINKAGES
from embeddings.cold_placement import cold_items_place
from embeddings.learners import LearnerParams
from embeddings.models import VersionArtifacts
from embeddings.recommendations import user_recommendations_list
from embeddings.similarity import item_similar_list
from recsys.ingestion.events import interactions_ingest
from recsys.services import items_upsert

pytestmark = pytest.mark.django_db

TOPICS = {"a": "telescope planets galaxies comet stars", "b": "pasta garlic basil tomato sauce"}


def mapped_rows(table: str) -> dict[str, bool]:
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("SELECT i.external_id, v.mapped FROM {} v JOIN recsys_item i ON i.id = v.item_id")
            .format(sql.Identifier(table))
            .as_string(connection.connection)
        )
        return dict(cursor.fetchall())


@pytest.fixture
def trained(communities, settings):
    """The communities' items with text of their community's topic, a content version, then a
    collaborative one (which fits the map)."""
    settings.RECSYS_CONTENT_ENCODER = "fake"
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_RANKING = False
    words = {i: TOPICS["a" if i < 15 else "b"].split() for i in range(30)}
    items_upsert(
        rows=[
            {"id": f"i{i}", "title": " ".join(words[i][:3]), "text": " ".join(words[i]) + f" n{i}"} for i in range(30)
        ]
    )
    content.content_model_build(version_id=content.content_version_create().pk)
    version = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=8))
    return services.collaborative_model_train(version_id=version.pk)


def test_the_run_stores_a_content_map_fitted_on_the_active_content_version(trained):
    artifacts = VersionArtifacts.objects.get(version=trained)

    assert artifacts.content_map and artifacts.content_version is not None
    assert "content_map_r2" in trained.metrics
    # its penalty was chosen by the users' rankings of held-out items (the run's own users judge it)
    assert 0.0 <= trained.metrics["content_map_ndcg@10"] <= 1.0
    # and the factor on mapped scores by the validation users' full rankings (0.1 without evidence)
    assert trained.metrics["content_map_shrinkage"] in SHRINKAGES
    assert not any(mapped_rows(trained.item_table).values())  # trained rows are not mapped


def test_a_new_item_with_text_gets_a_mapped_vector_without_a_retrain(trained):
    items_upsert(rows=[{"id": "new-scope", "title": "telescope planets", "text": "galaxies comet stars telescope"}])
    content.content_items_encode()

    placed = cold_items_place()

    assert placed == 1
    assert mapped_rows(trained.item_table)["new-scope"] is True
    similar = item_similar_list(item_external_id="new-scope", limit=5, space="collaborative")
    assert similar.strategy == "collaborative"
    assert sum(int(item.id[1:]) < 15 for item in similar.items) >= 4  # its topic's community
    fan = [i.id for i in user_recommendations_list(user_external_id="u0", limit=30).items]
    other = [i.id for i in user_recommendations_list(user_external_id="u25", limit=30).items]
    assert "new-scope" in fan and "new-scope" in other  # placed in the space every user searches
    assert fan.index("new-scope") < other.index("new-scope")  # nearer its topic's fans


def test_placement_is_idempotent_and_never_overwrites_trained_rows(trained):
    items_upsert(rows=[{"id": "new-pasta", "title": "pasta basil", "text": "tomato sauce garlic pasta"}])
    content.content_items_encode()
    assert cold_items_place() == 1

    assert cold_items_place() == 0
    rows = mapped_rows(trained.item_table)
    assert rows["new-pasta"] is True and rows["i3"] is False


def test_a_retrain_replaces_mapped_vectors_with_learned_ones(trained):
    items_upsert(rows=[{"id": "new-pasta", "title": "pasta basil", "text": "tomato sauce garlic pasta"}])
    content.content_items_encode()
    cold_items_place()
    interactions_ingest(rows=[{"user": "u25", "item": "new-pasta", "type": "purchase"}])

    version = services.collaborative_model_train(
        version_id=services.collaborative_version_create(params=LearnerParams(factors=8, iterations=8)).pk
    )

    assert mapped_rows(version.item_table)["new-pasta"] is False


def test_a_text_encoded_again_while_it_was_being_mapped_is_mapped_again(trained):
    # The encoder stamps its rows with its transaction's start; a placement that read the old vector and
    # wrote after that start stamped the mapped row later, and the new text was never mapped (before)
    from embeddings.models import ActiveVersion, Kind

    items_upsert(rows=[{"id": "new-pasta", "title": "pasta basil", "text": "tomato sauce garlic pasta"}])
    content.content_items_encode()
    assert cold_items_place() == 1
    content_table = ActiveVersion.objects.get(kind=Kind.CONTENT).version.item_table
    with connection.cursor() as cursor:
        stamps = sql.SQL(
            "SELECT v.updated_at, c.updated_at FROM {} v JOIN {} c USING (item_id) JOIN recsys_item i ON i.id = item_id "
            "WHERE i.external_id = 'new-pasta'"
        ).format(sql.Identifier(trained.item_table), sql.Identifier(content_table))
        cursor.execute(stamps.as_string(connection.connection))
        mapped_at, encoded_at = cursor.fetchone()
        assert mapped_at == encoded_at  # the content row it was mapped from
        # the item's text encoded again by a transaction that began a moment after the old encode
        cursor.execute(
            sql.SQL(
                "UPDATE {} c SET updated_at = c.updated_at + interval '1 millisecond' FROM recsys_item i "
                "WHERE i.id = c.item_id AND i.external_id = 'new-pasta'"
            )
            .format(sql.Identifier(content_table))
            .as_string(connection.connection)
        )

    assert cold_items_place() == 1


def test_placement_goes_on_after_the_same_pretrained_encoder_builds_a_new_content_version(trained):
    # The same model and settings: the same space, so the run's map still reads it (before: nothing was
    # placed until the next collaborative run)
    content.content_model_build(version_id=content.content_version_create().pk)
    items_upsert(rows=[{"id": "new-scope", "title": "telescope planets", "text": "galaxies comet stars telescope"}])
    content.content_items_encode()

    assert cold_items_place() == 1
    assert mapped_rows(trained.item_table)["new-scope"] is True
