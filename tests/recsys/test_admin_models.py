"""The admin's models page and embedding map: versions with metrics against popularity, training
started from the page, activation, rollback, pruning, progress, and the map computed by a task."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from embeddings import content, maps, operations, runs, services, tasks
from embeddings.models import ActiveVersion, EmbeddingMap, Kind, ModelVersion, Status
from tests.recsys.admin_setup import (
    catalogue_store,
    collaborative_train,
    content_build,
    interactions_store,
    models_trained,
)

pytestmark = pytest.mark.django_db
MODELS = "/admin/embeddings/modelversion/"


@pytest.fixture
def data(settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_CONTENT_ENCODER = "fake"
    catalogue_store()
    interactions_store()


@pytest.fixture
def two_versions(data, settings):
    """Two collaborative versions; the newer one is active."""
    settings.RECSYS_QUALITY_MARGIN = 1.0  # always activate the newer one
    return collaborative_train(regularization=10.0), collaborative_train(regularization=50.0)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def active(kind: str = Kind.COLLABORATIVE) -> int | None:
    return ActiveVersion.objects.filter(kind=kind).values_list("version_id", flat=True).first()


# ---- the list, chart and detail page ----------------------------------------------------------


def test_models_page_lists_versions_with_ndcg_against_popularity_and_charts_it(admin_client, two_versions):
    older, newer = two_versions

    html = admin_client.get(MODELS).content.decode()

    for version in (older, newer):
        assert f"{version.metrics['ndcg@10']:.4f}" in html and f"{version.baseline_metrics['ndcg@10']:.4f}" in html
    chart = json.loads(html.split('id="ndcg-data" type="application/json">')[1].split("</script>")[0])
    assert [row["version"] for row in chart] == [older.pk, newer.pk]
    assert chart[0]["ndcg"] == round(older.metrics["ndcg@10"], 5)
    assert 'data-chart="ndcg"' in html and "echarts.common.min.js" in html


def test_version_page_shows_parameters_timings_and_each_metric_beside_popularity(admin_client, two_versions):
    older, _ = two_versions

    html = admin_client.get(f"{MODELS}{older.pk}/change/").content.decode()

    assert "<th>metric</th><th>model</th><th>popularity</th>" in html
    assert f"<td>ndcg@10</td><td>{older.metrics['ndcg@10']:.4f}</td>" in html
    assert "regularization" in html and "fit" in html  # params and timings
    assert 'id="activate-version"' in html  # ready, not active: it can be activated


def test_version_page_is_a_read_only_record_with_tables_not_json(admin_client, two_versions):
    older, _ = two_versions

    html = admin_client.get(f"{MODELS}{older.pk}/change/").content.decode()

    assert 'name="_save"' not in html and 'name="_continue"' not in html and "closelink" in html
    assert "<th scope='row'>regularization</th><td>10</td>" in html  # parameters
    assert re.search(r"<th scope='row'>fit</th><td class='recsys-number'>[\d.,]+ s</td>", html)  # timings
    assert '<th scope="row">total</th>' in html
    assert f"<th scope='row'>interactions</th><td>{older.counts['interactions']:,}</td>" in html  # counts
    assert "<th scope='row'>stage</th><td>done</td>" in html  # progress
    assert "{&quot;" not in html and '{"' not in html.split('id="content-main"')[1].split("</form>")[0]


def test_a_finished_run_says_done_and_a_failed_one_says_failed(settings):
    settings.RECSYS_CF_TUNE = False
    catalogue_store()  # items, but no interactions to learn from
    failing = services.collaborative_version_create()

    with pytest.raises(ValueError, match="no interactions"):
        services.collaborative_model_train(version_id=failing.pk)
    interactions_store()
    finished = collaborative_train()

    failing.refresh_from_db()
    assert failing.status == Status.FAILED and failing.progress["stage"] == "failed"
    assert finished.status == Status.ACTIVE and finished.progress["stage"] == "done"
    assert finished.progress["candidates"]  # what the run reported on the way is kept


def test_a_built_content_version_says_done(settings):
    settings.RECSYS_CONTENT_ENCODER = "fake"
    catalogue_store()

    assert content_build().progress["stage"] == "done"


def test_maps_and_vector_spaces_are_read_only_records(admin_client, settings):
    collaborative, _ = models_trained(settings)
    emap = maps.embedding_map_compute(version_id=collaborative.pk)

    html = admin_client.get(f"/admin/embeddings/embeddingmap/{emap.pk}/change/").content.decode()

    assert 'name="_save"' not in html and "closelink" in html


def test_training_progress_is_shown_and_the_page_refreshes_itself_meanwhile(admin_client, data):
    version = content.content_version_create()
    ModelVersion.objects.filter(pk=version.pk).update(progress={"stage": "encoding", "done": 2048, "left": 6144})

    html = admin_client.get(MODELS).content.decode()

    assert "encoding 2048/8192 (25%)" in html
    assert 'data-refresh-seconds="5"' in html


def test_versions_are_found_by_number(admin_client, two_versions):
    older, newer = two_versions

    html = admin_client.get(f"{MODELS}?q=v{older.pk}").content.decode()

    assert f">v{older.pk}</a>" in html and f">v{newer.pk}</a>" not in html


def test_versions_cannot_be_added_or_deleted_by_hand(admin_client, two_versions):
    assert admin_client.get(f"{MODELS}add/").status_code == 403
    assert admin_client.get(f"{MODELS}{two_versions[0].pk}/delete/").status_code == 403


# ---- actions ----------------------------------------------------------------------------------


def test_train_now_claims_a_run_and_the_worker_activates_it(admin_client, data):
    response = admin_client.post(f"{MODELS}train/", {"kind": "collaborative"}, follow=True)

    version = ModelVersion.objects.get(kind=Kind.COLLABORATIVE)
    assert messages_of(response) == [f"Collaborative training started: version {version.pk} (active)."]
    assert active() == version.pk


def test_train_now_builds_a_content_version(admin_client, data):
    admin_client.post(f"{MODELS}train/", {"kind": "content"})

    assert active(Kind.CONTENT) == ModelVersion.objects.get(kind=Kind.CONTENT).pk


def test_a_second_run_while_one_trains_becomes_a_message(admin_client, data):
    running = services.collaborative_version_create()

    response = admin_client.post(f"{MODELS}train/", {"kind": "collaborative"}, follow=True)

    assert response.status_code == 200
    [message] = messages_of(response)
    assert message.startswith("Collaborative training not started: version") and str(running.pk) in message
    assert re.search(r"until \d\d:\d\d:\d\d UTC \(in \d+ min\)$", message), message  # not 22:48:22.116288+00:00
    assert ModelVersion.objects.count() == 1


def test_a_broker_that_is_down_becomes_a_message(admin_client, data, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("no broker")

    monkeypatch.setattr(tasks.collaborative_model_train, "apply_async", refuse)

    response = admin_client.post(f"{MODELS}train/", {"kind": "collaborative"}, follow=True)

    assert response.status_code == 200
    assert "unavailable" in messages_of(response)[0]
    assert ModelVersion.objects.get().status == Status.FAILED  # the claim is released


def test_training_needs_a_post_and_a_known_kind(admin_client, data):
    assert admin_client.get(f"{MODELS}train/").status_code == 405
    assert admin_client.post(f"{MODELS}train/", {"kind": "other"}).status_code == 404


def test_activate_serves_an_older_version(admin_client, two_versions):
    older, _ = two_versions

    response = admin_client.post(f"{MODELS}{older.pk}/activate/", follow=True)

    assert messages_of(response) == [f"Serving collaborative version {older.pk} now."]
    assert active() == older.pk


def test_activating_a_failed_version_is_refused_with_a_message(admin_client, data):
    failed = ModelVersion.objects.create(kind=Kind.COLLABORATIVE, algorithm="als", status=Status.FAILED)

    response = admin_client.post(f"{MODELS}{failed.pk}/activate/", follow=True)

    assert messages_of(response)[0].startswith("Not activated:")
    assert active() is None


def test_the_activate_action_takes_exactly_one_version(admin_client, two_versions):
    older, newer = two_versions
    both = {"action": "activate", "_selected_action": [older.pk, newer.pk]}

    refused = admin_client.post(MODELS, both, follow=True)
    done = admin_client.post(MODELS, {"action": "activate", "_selected_action": [older.pk]}, follow=True)

    assert messages_of(refused) == ["Select exactly one version to activate."]
    assert messages_of(done) == [f"Serving collaborative version {older.pk} now."] and active() == older.pk


def test_roll_back_serves_the_previous_version_and_the_button_names_it(admin_client, two_versions):
    older, _newer = two_versions
    assert f"Roll collaborative back to v{older.pk}" in admin_client.get(MODELS).content.decode()

    response = admin_client.post(f"{MODELS}rollback/", {"kind": "collaborative"}, follow=True)

    assert messages_of(response) == [f"Rolled back: serving collaborative version {older.pk}."]
    assert active() == older.pk
    assert operations.rollback_target(kind=Kind.COLLABORATIVE) is None


def test_roll_back_with_nothing_older_is_a_message(admin_client, data):
    collaborative_train()

    response = admin_client.post(f"{MODELS}rollback/", {"kind": "collaborative"}, follow=True)

    assert messages_of(response)[0].startswith("Not rolled back: no older collaborative version")


def test_delete_old_keeps_the_newest_and_drops_the_others_vectors(admin_client, two_versions, settings):
    settings.RECSYS_PRUNE_GRACE_SECONDS = 0
    older, newer = two_versions

    response = admin_client.post(f"{MODELS}prune/", {"kind": "collaborative", "keep": "1"}, follow=True)

    assert messages_of(response) == [f"Dropped the vectors of 1 collaborative version(s): v{older.pk}."]
    older.refresh_from_db()
    assert older.status == Status.RETIRED and not older.has_tables
    assert ModelVersion.objects.get(pk=newer.pk).has_tables


def test_delete_old_keeps_a_version_that_served_moments_ago_and_says_so(admin_client, two_versions):
    older, _ = two_versions  # served until the newer one was activated, just now

    response = admin_client.post(f"{MODELS}prune/", {"kind": "collaborative", "keep": "1"}, follow=True)

    assert messages_of(response)[0].startswith(
        f"Dropped the vectors of 0 collaborative version(s): none. Kept for now: v{older.pk}, which served less than"
    )
    assert ModelVersion.objects.get(pk=older.pk).has_tables


def test_delete_old_refuses_to_keep_none(admin_client, two_versions):
    response = admin_client.post(f"{MODELS}prune/", {"kind": "collaborative", "keep": "0"}, follow=True)

    assert messages_of(response) == ["Keep at least one version."]
    assert ModelVersion.objects.filter(has_tables=True).count() == 2


def test_staff_without_change_permission_cannot_train(client, django_user_model, data):
    viewer = django_user_model.objects.create_user("viewer", password="pw-123456789", is_staff=True)
    client.force_login(viewer)

    assert client.post(f"{MODELS}train/", {"kind": "collaborative"}).status_code == 403
    assert not ModelVersion.objects.exists()


# ---- the embedding map ------------------------------------------------------------------------


def test_map_of_a_content_version_is_computed_by_the_task_and_coloured_by_cluster(admin_client, settings):
    _collaborative, built = models_trained(settings)

    admin_client.post(f"{MODELS}map/{built.pk}/compute/")  # eager: the task runs at once

    emap = EmbeddingMap.objects.get(version=built)
    assert emap.state == EmbeddingMap.State.READY and emap.coloured_by == "cluster" and emap.sample_size == 16
    points = admin_client.get(f"{MODELS}map/{built.pk}/points.json").json()
    assert len(points["x"]) == len(points["y"]) == len(points["item"]) == len(points["title"]) == 16
    assert points["groups"][-1] == "no cluster" and len(points["colours"]) == len(points["groups"])
    assert "Telescope and comet" in points["title"]


def test_map_of_a_collaborative_version_is_coloured_by_first_category(admin_client, settings):
    collaborative, _ = models_trained(settings)

    admin_client.post(f"{MODELS}map/{collaborative.pk}/compute/")
    points = admin_client.get(f"{MODELS}map/{collaborative.pk}/points.json").json()

    assert points["coloured_by"] == "category"
    assert set(points["groups"][:2]) == {"cooking", "sky"}
    by_item = dict(zip(points["item"], points["group"], strict=True))
    sky = points["groups"].index("sky")
    from recsys.models import Item

    assert all(by_item[pk] == sky for pk in Item.objects.filter(categories=["sky"]).values_list("pk", flat=True))


def test_map_page_defaults_to_the_active_collaborative_version_and_draws_its_points(admin_client, settings):
    collaborative, _built = models_trained(settings)
    maps.embedding_map_compute(version_id=collaborative.pk)

    html = admin_client.get(f"{MODELS}map/").content.decode()

    assert f'<option value="{collaborative.pk}" selected>' in html
    assert f'data-url="{MODELS}map/{collaborative.pk}/points.json"' in html
    assert 'data-item-url="/admin/recsys/item/{id}/change/"' in html
    assert "16 items, coloured by first category, t-SNE of the 8-d vectors" in html


def test_map_page_without_a_map_offers_to_compute_it(admin_client, settings):
    _, built = models_trained(settings)

    html = admin_client.get(f"{MODELS}map/?version={built.pk}").content.decode()

    assert f"No map of v{built.pk} yet." in html and f'action="{MODELS}map/{built.pk}/compute/"' in html
    assert admin_client.get(f"{MODELS}map/{built.pk}/points.json").status_code == 404


def test_a_pending_map_refreshes_its_page(admin_client, settings, monkeypatch):
    collaborative, _ = models_trained(settings)
    monkeypatch.setattr(tasks.embedding_map_compute, "delay", lambda *args: None)  # no worker picks it up

    admin_client.post(f"{MODELS}map/{collaborative.pk}/compute/")
    html = admin_client.get(f"{MODELS}map/?version={collaborative.pk}").content.decode()

    assert "Computing on a worker" in html and 'data-refresh-seconds="2"' in html


def test_a_version_without_vectors_cannot_be_mapped(admin_client, two_versions, settings):
    settings.RECSYS_PRUNE_GRACE_SECONDS = 0
    older, _ = two_versions
    runs.model_versions_prune(kind=Kind.COLLABORATIVE, keep=1)

    response = admin_client.post(f"{MODELS}map/{older.pk}/compute/", follow=True)

    assert messages_of(response)[0].startswith("Map not computed:")
    assert not EmbeddingMap.objects.exists()


def test_the_map_page_with_no_versions_says_how_to_get_one(admin_client):
    html = admin_client.get(f"{MODELS}map/").content.decode()

    assert "No version has vectors yet" in html


def test_pca_puts_two_separated_groups_apart_on_the_first_axis():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (50, 8)) + 3
    b = rng.normal(0, 0.1, (50, 8)) - 3

    points = maps.pca_2d(np.vstack([a, b]).astype(np.float32))

    assert points.shape == (100, 2) and points.dtype == np.float32
    assert (np.sign(points[:50, 0]) == -np.sign(points[50:, 0])).all()
    assert np.allclose(points, maps.pca_2d(np.vstack([a, b]).astype(np.float32)))


def test_map_points_are_directions_so_one_long_vector_does_not_squash_the_rest():
    vectors = np.array([[1, 0], [2, 0], [0, 1], [0, 1000]], dtype=np.float32)

    unit = maps.unit_rows(vectors)

    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    assert np.allclose(unit[0], unit[1]) and np.allclose(unit[2], unit[3])
    assert np.allclose(maps.unit_rows(np.zeros((1, 3), dtype=np.float32)), 0.0)


@pytest.mark.parametrize("shape", [(0, 4), (1, 4), (5, 1)])
def test_pca_handles_empty_single_and_one_dimensional_input(shape):
    points = maps.pca_2d(np.ones(shape, dtype=np.float32))

    assert points.shape == (shape[0], 2)
    assert re.match("float32", str(points.dtype))


def test_staff_who_may_only_view_keys_cannot_revoke_them_by_an_action(client, django_user_model, settings):
    # Django offers an action to anyone who may open the list (before: a view-only account revoked
    # clients' keys through the actions' dropdown; the versions' "activate" action had the same gap)
    from django.contrib.auth.models import Permission

    from recsys.api_keys import api_key_create
    from recsys.models import ApiKey

    models_trained(settings)
    key, _raw = api_key_create(name="client", scopes=["read"])
    viewer = django_user_model.objects.create_user("viewer", password="pw-123456789", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_modelversion", "view_apikey", "view_user"])
    )
    client.force_login(viewer)

    revoke = client.post("/admin/recsys/apikey/", {"action": "revoke", "_selected_action": [key.pk]})

    assert revoke.status_code in (200, 302)
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    assert client.get(f"{MODELS}map/").status_code == 200  # viewing is what they may do
    viewer.user_permissions.remove(*Permission.objects.filter(codename="view_user"))
    assert client.get("/admin/preview/?user=u1").status_code == 403  # a user's items and their reasons
