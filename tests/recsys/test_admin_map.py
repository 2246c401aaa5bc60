"""The embedding map: computed when a version becomes active, a t-SNE that keeps neighbourhoods
apart, content clusters named by their most distinctive words (on the map and the item page), and
a distinct colour per group shown."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings import maps, runs, tasks
from embeddings.models import EmbeddingMap
from recsys.models import Item
from tests.recsys.admin_setup import COOKING, SKY, collaborative_train, models_trained

pytestmark = pytest.mark.django_db
MODELS = "/admin/embeddings/modelversion/"


def blobs(n: int = 60, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two groups of unit vectors around random directions, and each row's group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, d))
    group = np.arange(n) % 2
    vectors = centres[group] + 0.5 * rng.normal(size=(n, d))
    return maps.unit_rows(vectors.astype(np.float32)), group


# ---- projection, names, colours (no database) --------------------------------------------------


def test_tsne_keeps_each_points_nearest_neighbour_in_its_own_group():
    vectors, group = blobs()

    points, projection = maps.projection_2d(vectors)

    assert projection == "t-SNE" and points.shape == (60, 2) and points.dtype == np.float32
    distances = np.linalg.norm(points[:, None] - points[None], axis=2) + np.eye(60) * 1e9
    assert (group[distances.argmin(axis=1)] == group).all()
    assert np.allclose(points, maps.projection_2d(vectors)[0])  # the same map on every recompute


@pytest.mark.parametrize("shape", [(0, 8), (3, 8), (20, 1)])
def test_a_handful_of_points_or_one_dimension_falls_back_to_pca(shape):
    points, projection = maps.projection_2d(np.ones(shape, dtype=np.float32))

    assert projection == "PCA" and points.shape == (shape[0], 2)


def test_clusters_are_named_by_their_distinctive_words_not_the_shared_ones():
    texts = [
        "Late night jazz: a saxophone trio, the best of the club",
        "Jazz club classics with saxophone and piano, the best",
        "Pasta with garlic and tomato sauce, the best",
        "Garlic bread and pasta sauce from the oven, the best",
    ]

    names = maps.cluster_names(texts, [7, 7, 3, 3])

    assert set(names) == {3, 7}
    assert set(names[7].split(", ")) <= {"jazz", "saxophone", "club", "trio", "piano", "late", "night", "classics"}
    assert names[7].split(", ")[:2] in (["jazz", "saxophone"], ["saxophone", "jazz"], ["club", "jazz"])
    assert "garlic" in names[3] and "pasta" in names[3] and "sauce" in names[3]
    assert "best" not in names[3] + names[7]  # in every cluster: says nothing about one


def test_a_cluster_without_words_gets_no_name():
    assert maps.cluster_names(["", "42 17"], [0, 1]) == {0: "", 1: ""}


def test_the_palette_gives_every_group_shown_its_own_colour():
    labels = [f"category {n}" for n in range(30)] + ["other", "uncategorised"]

    colours = maps.palette(labels)

    assert len(colours) == 32 and len(set(colours[:30])) == 30
    assert colours[30] != colours[31] and colours[30] not in colours[:30]
    assert maps.palette(["a", "b"]) == maps.DISTINCT_COLOURS[:2]


# ---- computed when a version becomes active ------------------------------------------------------


def test_activating_a_version_has_its_map_computed(settings, django_capture_on_commit_callbacks):
    settings.RECSYS_CF_TUNE = False
    collaborative, _ = models_trained(settings)
    EmbeddingMap.objects.all().delete()

    with django_capture_on_commit_callbacks(execute=True):  # eager: the task runs at the commit
        runs.model_version_activate(version_id=collaborative.pk)

    emap = EmbeddingMap.objects.get(version=collaborative)
    assert emap.state == EmbeddingMap.State.READY and emap.sample_size == 16
    assert emap.points["projection"] == "t-SNE"


def test_rolling_back_to_a_version_keeps_its_map(settings, django_capture_on_commit_callbacks):
    settings.RECSYS_QUALITY_MARGIN = 1.0
    older, _ = models_trained(settings)
    kept = maps.embedding_map_compute(version_id=older.pk)
    collaborative_train(regularization=50.0)

    with django_capture_on_commit_callbacks(execute=True):
        runs.model_version_activate(version_id=older.pk)

    assert EmbeddingMap.objects.get(version=older).computed_at == kept.computed_at


def test_activation_with_the_broker_down_still_switches_serving(
    settings, monkeypatch, django_capture_on_commit_callbacks
):
    collaborative, _ = models_trained(settings)
    EmbeddingMap.objects.all().delete()

    def broker_down(*args: object) -> None:
        raise ConnectionError("redis is away")

    monkeypatch.setattr(tasks.embedding_map_compute, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        version = runs.model_version_activate(version_id=collaborative.pk)

    assert version.status == "active"
    assert EmbeddingMap.objects.get(version=collaborative).state == EmbeddingMap.State.FAILED

    # and once Redis is back, the beat asks for it again (eager: computed at once)
    monkeypatch.undo()
    assert collaborative.pk in tasks.embedding_maps_resume()  # (the content version's, deleted above, too)
    assert EmbeddingMap.objects.get(version=collaborative).state == EmbeddingMap.State.READY
    assert tasks.embedding_maps_resume() == []


def test_the_beat_asks_again_only_for_maps_that_were_lost_not_for_ones_that_failed_to_compute(settings):
    from datetime import timedelta

    from django.utils import timezone

    collaborative, content = models_trained(settings)
    EmbeddingMap.objects.all().delete()
    EmbeddingMap.objects.create(  # asked for 40 minutes ago, never computed (the task was lost)
        version=collaborative, state=EmbeddingMap.State.PENDING, requested_at=timezone.now() - timedelta(minutes=40)
    )
    EmbeddingMap.objects.create(  # its computation failed: asked again by hand only
        version=content, state=EmbeddingMap.State.FAILED, requested_at=timezone.now(), computed_at=timezone.now()
    )

    assert maps.embedding_maps_resume(now=timezone.now() - timedelta(minutes=20)) == []  # not lost yet
    assert maps.embedding_maps_resume() == [collaborative.pk]


# ---- named clusters on the map and the item page -------------------------------------------------


def test_content_clusters_are_named_on_the_map_and_on_the_item_page(admin_client, settings):
    settings.RECSYS_CONTENT_CLUSTERS = 2
    _, built = models_trained(settings)

    admin_client.post(f"{MODELS}map/{built.pk}/compute/")
    points = admin_client.get(f"{MODELS}map/{built.pk}/points.json").json()

    names = points["cluster_names"]
    assert len(names) == 2 and all(names.values())
    assert points["groups"] == [names[c] for c in sorted(names, key=int)] + ["no cluster"]
    vocabulary = set(COOKING + SKY) | {"and"}
    assert all(set(name.split(", ")) <= vocabulary for name in names.values())
    item = Item.objects.get(external_id="sky1")
    html = admin_client.get(f"/admin/recsys/item/{item.pk}/change/").content.decode()
    cell = html.split('data-space="content"')[1].split('class="recsys-cluster">')[1].split("</td>")[0]
    assert f"?version={built.pk}" in cell and any(name in cell for name in names.values())


def test_the_item_page_before_any_map_shows_the_cluster_number(admin_client, settings):
    models_trained(settings)
    item = Item.objects.get(external_id="sky1")

    html = admin_client.get(f"/admin/recsys/item/{item.pk}/change/").content.decode()

    assert (
        ">cluster</a> " in html.split('data-space="content"')[1].split('class="recsys-cluster">')[1].split("</td>")[0]
    )


def test_the_map_page_ignores_a_version_that_is_not_a_number(admin_client, settings):
    models_trained(settings)

    for asked in ("²", "-1", "abc", "99999999999999999999"):
        assert admin_client.get(f"{MODELS}map/", {"version": asked}).status_code == 200


def test_a_collaborative_map_is_coloured_by_category_with_distinct_colours(settings):
    collaborative, _ = models_trained(settings)

    points = maps.embedding_map_compute(version_id=collaborative.pk).points

    assert points["coloured_by"] == "category" and points["cluster_names"] == {}
    shown = [
        colour for label, colour in zip(points["groups"], points["colours"], strict=True) if label in {"cooking", "sky"}
    ]
    assert len(set(shown)) == 2


def test_a_map_asked_for_a_version_deleted_since_is_skipped_without_a_failure(caplog):
    # The task was queued, then the version was deleted (the admin, or pruning) before it ran.
    answer = tasks.embedding_map_compute.run(version_id=987654)

    assert answer == {"version": 987654, "state": "deleted", "points": 0}
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}]
