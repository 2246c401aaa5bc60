"""Experiments over the API: creation rules, assignment of personalised answers to variants, the
variant's serving configuration, stop and promote."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from embeddings import runs, services
from embeddings.learners import LearnerParams
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from experiments.assignment import variant_assign, weights_cumulative
from experiments.models import Experiment
from recsys.recommendation_ids import recommendation_id_read
from recsys.services import items_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(communities, settings):
    """Two trained collaborative versions; the newer one is active."""
    settings.RECSYS_CF_TUNE = False
    items_upsert(rows=[{"id": f"i{n}", "categories": ["first" if n < 15 else "second"]} for n in range(30)])
    trained = []
    for factors in (8, 6):
        params = LearnerParams(algorithm="als", factors=factors, iterations=10, regularization=0.05)
        version = services.collaborative_version_create(params=params)
        trained.append(services.collaborative_model_train(version_id=version.pk))
    runs.model_version_activate(version_id=trained[1].pk)
    return trained


def create(client, **body):
    return client.post("/api/v1/experiments", body, format="json")


def two_versions(old: ModelVersion, new: ModelVersion, **extra) -> dict:
    return {
        "name": "old against new",
        "control": "new",
        "variants": [
            {"name": "new", "weight": 1, "config": {"model_version": new.pk}},
            {"name": "old", "weight": 1, "config": {"model_version": old.pk}},
        ],
        **extra,
    }


def recommend(client, user: str, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in {"limit": 5, **params}.items())
    response = client.get(f"/api/v1/users/{user}/recommendations?{query}")
    assert response.status_code == 200, response.content
    return response.json()


def expected_variant(experiment_id: int, user: str, names: list[str], weights: list[float]) -> str:
    return variant_assign(
        experiment_id=experiment_id, user_id=user, names=names, cumulative=weights_cumulative(weights)
    )


def test_created_experiment_is_running_with_its_variants(admin_client_api, versions):
    response = create(admin_client_api, **two_versions(*versions))

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "running"
    assert body["control"] == "new"
    assert [(v["name"], v["config"]["model_version"]) for v in body["variants"]] == [
        ("new", versions[1].pk),
        ("old", versions[0].pk),
    ]
    assert all(v["impressions"] == 0 and v["p_value"] is None for v in body["variants"])


def test_each_user_is_served_by_their_assigned_variants_model_version(admin_client_api, reader, versions):
    experiment_id = create(admin_client_api, **two_versions(*versions)).json()["id"]
    by_name = {"new": versions[1].pk, "old": versions[0].pk}

    served = {}
    for n in range(12):
        body = recommend(reader, f"u{n}")
        variant = expected_variant(experiment_id, f"u{n}", ["new", "old"], [1, 1])
        assert body["experiment"] == {"id": experiment_id, "variant": variant}
        assert body["model"]["version"] == by_name[variant]
        ref = recommendation_id_read(body["recommendation_id"])
        assert ref is not None and (ref.experiment_id, ref.variant) == (experiment_id, variant)
        served[f"u{n}"] = variant
    assert set(served.values()) == {"new", "old"}  # 12 users land in both halves
    assert all(recommend(reader, user)["experiment"]["variant"] == v for user, v in served.items())  # sticky


def test_scenario_experiment_applies_only_to_requests_naming_the_scenario(admin_client_api, reader, versions):
    body = two_versions(*versions, scenario="homepage")
    experiment_id = create(admin_client_api, **body).json()["id"]

    assert recommend(reader, "u1")["experiment"] is None
    assert recommend(reader, "u1", scenario="homepage")["experiment"]["id"] == experiment_id
    assert recommend(reader, "u1", scenario="product-page")["experiment"] is None


def test_an_experiment_name_holding_nul_is_a_validation_error(admin_client_api, versions):
    # PostgreSQL text cannot hold NUL: it answered 500 (the probe of 2026-12-04)
    response = create(admin_client_api, **two_versions(*versions, name="a\x00b"))

    assert response.status_code == 400, response.content
    assert "name" in response.json()["error"]["details"]


def test_invalid_scenario_name_is_a_validation_error(reader, versions):
    response = reader.get("/api/v1/users/u1/recommendations?scenario=no%20spaces")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"scenario": ["invalid name"]}


@pytest.mark.parametrize(
    ("config", "strategy"), [({"strategy": "popular"}, "popular"), ({"strategy": "shuffled"}, "shuffled")]
)
def test_baseline_variants_serve_their_strategy(admin_client_api, reader, versions, config, strategy):
    create(
        admin_client_api,
        name="baseline",
        control="only",
        variants=[{"name": "only", "weight": 1, "config": config}, {"name": "tiny", "weight": 1e-9}],
    )

    body = recommend(reader, "u3", limit=10)

    assert body["experiment"]["variant"] == "only"
    assert body["strategy"] == strategy
    assert len(body["items"]) == 10


@pytest.mark.parametrize(("strategy", "served"), [("ranked", "collaborative"), ("content", "popular")])
def test_ranked_and_content_variants(admin_client_api, reader, versions, strategy, served):
    """Until the ranking stage exists a ranked variant is served collaboratively and says so; a content
    variant starts at the content profile (no content model here: popularity), never collaborative."""
    create(
        admin_client_api,
        name=strategy,
        control="only",
        variants=[{"name": "only", "weight": 1, "config": {"strategy": strategy}}, {"name": "x", "weight": 1e-9}],
    )
    assert recommend(reader, "u3")["strategy"] == served


def test_shuffled_variant_serves_the_collaborative_items_in_another_order(admin_client_api, reader, versions):
    collaborative = recommend(reader, "u3", limit=10)
    create(
        admin_client_api,
        name="shuffle",
        control="shuffled",
        variants=[{"name": "shuffled", "weight": 1, "config": {"strategy": "shuffled"}}, {"name": "x", "weight": 1e-9}],
    )

    orders = [[i["id"] for i in recommend(reader, "u3", limit=10)["items"]] for _ in range(6)]

    assert all(sorted(order) == sorted(i["id"] for i in collaborative["items"]) for order in orders)
    assert len({tuple(order) for order in orders}) > 1


def test_variant_diversity_overrides_the_requests(admin_client_api, reader, versions):
    plain = recommend(reader, "u3", limit=8)
    create(
        admin_client_api,
        name="diverse",
        control="diverse",
        variants=[{"name": "diverse", "weight": 1, "config": {"diversity": 1.0}}, {"name": "x", "weight": 1e-9}],
    )
    diverse = recommend(reader, "u3", limit=8, diversity=0)
    assert [i["id"] for i in diverse["items"]] != [i["id"] for i in plain["items"]]


def test_anonymous_session_requests_take_part_in_no_experiment(admin_client_api, reader, versions):
    create(admin_client_api, **two_versions(*versions))
    response = reader.post("/api/v1/recommendations", {"items": ["i1", "i2"], "limit": 3}, format="json")
    assert response.status_code == 200
    assert response.json()["experiment"] is None
    assert recommendation_id_read(response.json()["recommendation_id"]) is not None


def test_every_recommendation_endpoint_answers_with_a_fresh_recommendation_id(reader, versions):
    calls = [
        lambda: reader.get("/api/v1/users/u3/recommendations?limit=3"),
        lambda: reader.get("/api/v1/items/i1/similar?limit=3"),
        lambda: reader.post("/api/v1/recommendations", {"items": ["i1"], "limit": 3}, format="json"),
        lambda: reader.get("/api/v1/items/popular?limit=3"),
        lambda: reader.get("/api/v1/search?q=item&mode=keyword&limit=3"),
    ]
    for call in calls:
        first, second = call(), call()  # the second answer may come from the answer cache
        assert first.status_code == second.status_code == 200, first.content
        assert first.json()["items"] == second.json()["items"]
        assert first.json()["experiment"] is None
        ids = {first.json()["recommendation_id"], second.json()["recommendation_id"]}
        assert len(ids) == 2
        assert all(recommendation_id_read(i) is not None for i in ids)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b, old, new: b["variants"][1]["config"].update(model_version=10_000), "variants"),
        (lambda b, old, new: b["variants"][1]["config"].update(strategy="random"), "variants"),
        (lambda b, old, new: b.update(control="neither"), "control"),
        (lambda b, old, new: b.update(variants=b["variants"][:1]), "variants"),
        (lambda b, old, new: b["variants"][1].update(name="new"), "variants"),
        (lambda b, old, new: b["variants"][1].update(weight=0), "variants"),
        (lambda b, old, new: b.update(alpha=0.7), "alpha"),
        (lambda b, old, new: b.update(alpha=1e-17), "alpha"),  # z infinite: metrics failed every minute
        (lambda b, old, new: b.update(mde=1e-160), "mde"),  # the users required past a float
        (lambda b, old, new: b.update(scenario="home page"), "scenario"),
        (lambda b, old, new: b.update(colour="red"), "colour"),
    ],
)
def test_invalid_experiments_are_refused_with_the_field_at_fault(admin_client_api, versions, change, field):
    body = two_versions(*versions)
    change(body, *versions)

    response = create(admin_client_api, **body)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"
    assert field in response.json()["error"]["details"]
    assert not Experiment.objects.exists()


def test_a_version_without_vectors_cannot_be_a_variant(admin_client_api, versions):
    ModelVersion.objects.filter(pk=versions[0].pk).update(status=Status.FAILED, has_tables=False)
    response = create(admin_client_api, **two_versions(*versions))
    assert response.status_code == 400
    assert "failed" in str(response.json()["error"]["details"])


def test_second_running_experiment_for_a_scenario_conflicts_until_the_first_stops(admin_client_api, versions):
    first = create(admin_client_api, **two_versions(*versions)).json()
    assert create(admin_client_api, **two_versions(*versions)).status_code == 409
    assert create(admin_client_api, **two_versions(*versions, scenario="homepage")).status_code == 201

    stopped = admin_client_api.post(f"/api/v1/experiments/{first['id']}/stop")

    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert admin_client_api.post(f"/api/v1/experiments/{first['id']}/stop").status_code == 409
    assert create(admin_client_api, **two_versions(*versions)).status_code == 201


def test_stopped_experiment_no_longer_assigns_users(admin_client_api, reader, versions):
    experiment_id = create(admin_client_api, **two_versions(*versions)).json()["id"]
    assert recommend(reader, "u1")["experiment"] is not None
    admin_client_api.post(f"/api/v1/experiments/{experiment_id}/stop")
    body = recommend(reader, "u1")
    assert body["experiment"] is None
    assert body["model"]["version"] == versions[1].pk


def test_promote_activates_the_winners_version_and_completes_the_experiment(admin_client_api, versions):
    experiment_id = create(admin_client_api, **two_versions(*versions)).json()["id"]

    response = admin_client_api.post(f"/api/v1/experiments/{experiment_id}/promote", {"variant": "old"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "completed"
    assert response.json()["winner"] == "old"
    assert ActiveVersion.objects.get(kind=Kind.COLLABORATIVE).version_id == versions[0].pk
    again = admin_client_api.post(f"/api/v1/experiments/{experiment_id}/promote", {"variant": "old"}, format="json")
    assert again.status_code == 409


def test_promote_names_an_existing_variant(admin_client_api, versions):
    experiment_id = create(admin_client_api, **two_versions(*versions)).json()["id"]
    response = admin_client_api.post(f"/api/v1/experiments/{experiment_id}/promote", {"variant": "zzz"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"variant": ["unknown variant"]}


def test_unknown_experiment_is_404_and_reading_keys_may_not_see_experiments(admin_client_api, reader, versions):
    assert admin_client_api.get("/api/v1/experiments/999999").status_code == 404
    assert admin_client_api.post("/api/v1/experiments/999999/stop").status_code == 404
    assert reader.get("/api/v1/experiments").status_code == 403


def test_list_filters_by_status(admin_client_api, versions):
    first = create(admin_client_api, **two_versions(*versions)).json()["id"]
    admin_client_api.post(f"/api/v1/experiments/{first}/stop")
    second = create(admin_client_api, **two_versions(*versions)).json()["id"]

    running = admin_client_api.get("/api/v1/experiments?status=running").json()
    everything = admin_client_api.get("/api/v1/experiments").json()

    assert [e["id"] for e in running] == [second]
    assert [e["id"] for e in everything] == [second, first]


def test_pruning_keeps_the_versions_a_running_experiment_serves(admin_client_api, versions, settings):
    settings.RECSYS_PRUNE_GRACE_SECONDS = 0
    create(admin_client_api, **two_versions(*versions))

    pruned = runs.model_versions_prune(kind=Kind.COLLABORATIVE, keep=1)

    assert pruned == []
    assert ModelVersion.objects.get(pk=versions[0].pk).has_tables


def test_pruning_keeps_a_stopped_experiments_versions_for_its_promotion_for_a_week(
    admin_client_api, versions, settings
):
    settings.RECSYS_PRUNE_GRACE_SECONDS = 0
    experiment = create(admin_client_api, **two_versions(*versions)).json()["id"]
    admin_client_api.post(f"/api/v1/experiments/{experiment}/stop")

    assert runs.model_versions_prune(kind=Kind.COLLABORATIVE, keep=1) == []  # "old" can still be promoted

    Experiment.objects.filter(pk=experiment).update(stopped_at=timezone.now() - timedelta(days=8))
    assert runs.model_versions_prune(kind=Kind.COLLABORATIVE, keep=1) == [versions[0].pk]


def test_an_experiment_id_beyond_any_key_is_404_not_an_error(admin_client_api, db):
    for path in ("/api/v1/experiments/99999999999999999999", "/api/v1/experiments/99999999999999999999/stop"):
        response = admin_client_api.post(path) if path.endswith("stop") else admin_client_api.get(path)
        assert response.status_code == 404, response.content


@pytest.mark.parametrize(
    "body",
    [[], "x", {"name": ["x"], "control": ["a"], "variants": [{"name": {}, "weight": "1"}, 3]}, {"variants": None}],
)
def test_malformed_bodies_are_validation_errors(admin_client_api, db, body):
    response = admin_client_api.post("/api/v1/experiments", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"


def popular_against_collaborative(scenario: str | None = None) -> dict:
    return {
        "name": "popular against collaborative",
        "scenario": scenario,
        "control": "collaborative",
        "variants": [{"name": "collaborative", "weight": 1}, {"name": "popular", "config": {"strategy": "popular"}}],
    }


def test_a_promoted_winners_configuration_serves_its_placement(admin_client_api, reader, versions):
    experiment_id = create(admin_client_api, **popular_against_collaborative()).json()["id"]

    promoted = admin_client_api.post(
        f"/api/v1/experiments/{experiment_id}/promote", {"variant": "popular"}, format="json"
    )

    assert promoted.status_code == 200 and promoted.json()["serves_placement"] is True
    answers = [recommend(reader, user) for user in ("u1", "u2", "u3")]
    assert {a["strategy"] for a in answers} == {"popular"}  # every user now, not only the variant's
    assert all(a["experiment"] is None for a in answers)  # no experiment runs
    assert recommend(reader, "u1", scenario="elsewhere")["strategy"] == "collaborative"  # another placement


def test_a_running_experiment_takes_its_placement_back_from_the_promoted_configuration(
    admin_client_api, reader, versions
):
    first = create(admin_client_api, **popular_against_collaborative("home")).json()["id"]
    admin_client_api.post(f"/api/v1/experiments/{first}/promote", {"variant": "popular"}, format="json")
    assert recommend(reader, "u1", scenario="home")["strategy"] == "popular"

    second = create(admin_client_api, **{**two_versions(*versions), "scenario": "home"}).json()["id"]

    body = recommend(reader, "u1", scenario="home")
    assert body["experiment"]["id"] == second and body["strategy"] == "collaborative"
    admin_client_api.post(f"/api/v1/experiments/{second}/promote", {"variant": "new"}, format="json")
    body = recommend(reader, "u1", scenario="home")
    assert body["strategy"] == "collaborative" and body["model"]["version"] == versions[1].pk  # the new winner's
    assert Experiment.objects.get(pk=first).serves_placement is False


def test_withdrawing_a_promoted_configuration_returns_its_placement_to_the_defaults(admin_client_api, reader, versions):
    experiment_id = create(admin_client_api, **popular_against_collaborative()).json()["id"]
    admin_client_api.post(f"/api/v1/experiments/{experiment_id}/promote", {"variant": "popular"}, format="json")

    withdrawn = admin_client_api.post(f"/api/v1/experiments/{experiment_id}/withdraw")

    assert withdrawn.status_code == 200 and withdrawn.json()["serves_placement"] is False
    assert recommend(reader, "u1")["strategy"] == "collaborative"
    assert admin_client_api.post(f"/api/v1/experiments/{experiment_id}/withdraw").status_code == 409


def test_a_promoted_configuration_does_not_pin_the_model_version(admin_client_api, reader, versions):
    """Promoting activates the winner's version; a later activation replaces it as usual."""
    experiment_id = create(admin_client_api, **two_versions(*versions)).json()["id"]
    admin_client_api.post(f"/api/v1/experiments/{experiment_id}/promote", {"variant": "old"}, format="json")
    assert recommend(reader, "u1")["model"]["version"] == versions[0].pk

    runs.model_version_activate(version_id=versions[1].pk)

    assert recommend(reader, "u1")["model"]["version"] == versions[1].pk
