"""The ranking stage end to end against PostgreSQL: trained in the run, stored with the version,
served when it wins (or when forced), explained with feature contributions."""

from __future__ import annotations

import pytest
from django.urls import reverse

from embeddings import content, services
from embeddings.learners import LearnerParams
from embeddings.models import VersionArtifacts
from embeddings.recommendations import user_recommendations_list
from recsys.models import Interaction
from recsys.services import items_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(communities, settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_RANKING = True
    settings.RECSYS_CONTENT_ENCODER = "fake"
    items_upsert(
        rows=[
            {
                "id": f"i{i}",
                "text": ("telescope stars" if i < 15 else "pasta basil") + f" {i}",
                "categories": [f"c{i % 3}"],
            }
            for i in range(30)
        ]
    )
    content.content_model_build(version_id=content.content_version_create().pk)
    version = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=8))
    return services.collaborative_model_train(version_id=version.pk)


def seen(user: str) -> set[str]:
    return set(Interaction.objects.filter(user__external_id=user).values_list("item__external_id", flat=True))


def test_the_run_records_the_stage_against_the_best_source(trained):
    artifacts = VersionArtifacts.objects.get(version=trained)

    assert artifacts.ranker.startswith("tree")
    report = artifacts.ranking
    assert report["best_source"] in report["sources_ndcg@10"]
    assert trained.metrics["ranking_ndcg@10"] == report["ndcg@10"]
    assert trained.metrics["best_source_ndcg@10"] == report["best_source_ndcg@10"]
    assert report["users"] < report["min_users"] and not artifacts.ranking_used  # 40 users judge nothing


def test_forced_ranking_serves_ranked_unseen_items(trained):
    answer = user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    assert answer.strategy == "ranked" and answer.model == {"kind": "collaborative", "version": trained.pk}
    ids = [item.id for item in answer.items]
    assert len(ids) == 5 and not set(ids) & seen("u1")
    scores = [item.score for item in answer.items]
    assert scores == sorted(scores, reverse=True)
    assert sum(int(i[1:]) < 15 for i in ids) >= 4  # u1's community


def test_ranking_off_serves_the_collaborative_model(trained):
    assert user_recommendations_list(user_external_id="u1", limit=5, ranking=False).strategy == "collaborative"


@pytest.mark.parametrize("wins", [True, False])
def test_by_default_the_stage_is_used_only_when_it_won_on_validation(trained, wins):
    VersionArtifacts.objects.filter(version=trained).update(ranking_used=wins)

    answer = user_recommendations_list(user_external_id="u2", limit=5)

    assert answer.strategy == ("ranked" if wins else "collaborative")


def test_explain_gives_each_items_top_feature_contributions(trained):
    answer = user_recommendations_list(user_external_id="u3", limit=4, ranking=True, explain=True)

    assert answer.strategy == "ranked"
    for item in answer.items:
        features = item.reason["features"]
        assert 1 <= len(features) <= 3
        assert all(isinstance(f["feature"], str) and isinstance(f["contribution"], float) for f in features)
        assert "because" in item.reason


def test_ranking_respects_the_category_filter_and_exclusions(trained):
    answer = user_recommendations_list(user_external_id="u4", limit=5, ranking=True, category="c1", exclude=("i1",))

    assert answer.items and all(int(item.id[1:]) % 3 == 1 for item in answer.items)
    assert "i1" not in {item.id for item in answer.items}


def test_the_admin_version_page_shows_the_stage_against_the_best_source(trained, admin_client):
    page = admin_client.get(reverse("admin:embeddings_modelversion_change", args=[trained.pk]))

    assert page.status_code == 200
    text = page.content.decode().lower()
    assert "ranking stage" in text and "vs the best source" in text and "top features by gain" in text
