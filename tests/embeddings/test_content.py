"""Content versions: a build encodes every item, later text changes are re-encoded in batches,
and a changed encoder builds a new version that serving switches to."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from django.db import connection
from psycopg import sql

from embeddings import content
from embeddings import tasks as content_tasks
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from recsys.models import Item
from recsys.services import item_delete, items_upsert

pytestmark = pytest.mark.django_db

CATALOGUE = [
    {"id": "pasta", "title": "Garlic pasta", "text": "pasta with garlic and basil sauce", "categories": ["cooking"]},
    {"id": "soup", "title": "Tomato soup", "text": "tomato soup with basil", "categories": ["cooking"]},
    {"id": "scope", "title": "Backyard telescope", "text": "telescope for planets and galaxies", "categories": ["sky"]},
    {"id": "comet", "title": "Comet hunting", "text": "find a comet with a small telescope", "categories": ["sky"]},
    {"id": "blank", "title": "", "text": "", "categories": []},
]


def rows(version: ModelVersion) -> dict[str, tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "SELECT i.external_id, v.embedding IS NOT NULL, v.cluster, v.source_changed_at "
                "FROM {} v JOIN recsys_item i ON i.id = v.item_id"
            )
            .format(sql.Identifier(version.item_table))
            .as_string(connection.connection)
        )
        return {r[0]: r[1:] for r in cursor.fetchall()}


@pytest.fixture
def built(settings):
    settings.RECSYS_CONTENT_ENCODER = "fake"
    settings.RECSYS_CONTENT_CLUSTERS = 2
    items_upsert(rows=CATALOGUE)
    version = content.content_version_create()
    return content.content_model_build(version_id=version.pk)


def test_build_encodes_every_item_with_text_and_switches_serving(built):
    stored = rows(built)

    assert built.status == Status.ACTIVE and ActiveVersion.objects.get(kind=Kind.CONTENT).version_id == built.pk
    assert built.counts == {"items": 5, "encoded": 4, "without_text": 1}
    assert {k for k, (has_vector, *_) in stored.items() if has_vector} == {"pasta", "soup", "scope", "comet"}
    assert stored["blank"][0] is False  # recorded as "nothing to encode", not a zero vector
    assert built.params["encoder"] == "fake" and built.dimensions > 0
    assert set(built.timings) == {"load", "fit", "encode", "cluster", "store", "ann"}
    assert built.ef_search is not None and built.metrics["ann_recall@10"] >= 0.99


def test_clusters_group_items_by_topic(built):
    stored = rows(built)

    assert stored["pasta"][1] == stored["soup"][1]
    assert stored["scope"][1] == stored["comet"][1]
    assert stored["pasta"][1] != stored["scope"][1]
    assert np.asarray(built.centroids).shape == (2, built.dimensions)


def test_changed_and_new_items_are_encoded_and_unchanged_ones_left_alone(built):
    before = rows(built)
    items_upsert(rows=[{"id": "blank", "title": "Telescope mirrors"}, {"id": "new", "text": "garlic bread"}])

    written = content.content_items_encode()

    after = rows(built)
    assert written == 2
    assert after["blank"][0] is True and after["new"][0] is True
    assert after["pasta"][2] == before["pasta"][2]  # its encoding is from the build, untouched
    assert content.items_awaiting_encoding() == 0


def test_a_backlog_past_the_budget_goes_on_in_a_task_queued_behind_what_arrived_meanwhile(
    built, settings, django_capture_on_commit_callbacks, monkeypatch
):
    # Given five changed items, batches of two and no time to spare
    settings.RECSYS_CONTENT_BATCH = 2
    items_upsert(rows=[{"id": f"late{n}", "text": f"comet tail {n}"} for n in range(5)])
    queued = []
    monkeypatch.setattr(content_tasks.content_items_encode, "delay", lambda **kwargs: queued.append(kwargs))

    # When one encoding task runs (its budget spent after the first batch)
    with django_capture_on_commit_callbacks(execute=True):
        written = content.content_items_encode(budget_seconds=0)

    # Then it encoded one batch and queued the rest as a new task (a fold-in queued meanwhile on the
    # same worker runs first; before, one task encoded the whole backlog: minutes for large items)
    assert written == 2 and queued == [{"continuation": True}]
    assert content.items_awaiting_encoding() == 3
    # A sweep meanwhile queues no second chain; the continuation, when it runs, may queue the next
    with django_capture_on_commit_callbacks(execute=True):
        assert content.content_items_encode(budget_seconds=0) == 2
    assert len(queued) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert content.content_items_encode(budget_seconds=0, continuation=True) == 1
    # and a task that finds nothing left queues nothing
    assert len(queued) == 1 and content.items_awaiting_encoding() == 0


def test_an_encodings_first_batch_is_bounded_by_its_characters_not_only_its_items(
    built, settings, django_capture_on_commit_callbacks, monkeypatch
):
    # 16 texts of the API's 100,000 characters took minutes before a first write (before: the first
    # batch was 16 items, whatever their length)
    monkeypatch.setattr(content, "FIRST_BATCH_CHARS", 30)
    items_upsert(rows=[{"id": f"long{n}", "text": "comet " * 4} for n in range(3)])  # ~30 characters each
    queued = []
    monkeypatch.setattr(content_tasks.content_items_encode, "delay", lambda **kwargs: queued.append(kwargs))

    with django_capture_on_commit_callbacks(execute=True):
        written = content.content_items_encode(budget_seconds=0)

    assert written == 1 and queued == [{"continuation": True}] and content.items_awaiting_encoding() == 2


def test_items_awaiting_encoding_counts_what_changed(built):
    items_upsert(rows=[{"id": "pasta", "text": "pasta with lots of garlic"}, {"id": "n1"}, {"id": "n2"}])

    assert content.items_awaiting_encoding() == 3


def test_deleting_an_item_removes_its_vectors(built):
    item_delete(external_id="pasta")

    assert "pasta" not in rows(built)


def test_a_second_encoder_run_waits_for_none_while_one_holds_the_lock(built):
    items_upsert(rows=[{"id": "late", "text": "comet tails"}])
    dsn = connection.get_connection_params()
    with psycopg.connect(**dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext(%s))", [content.ENCODE_LOCK])

        assert content.content_items_encode() == 0
        # Released before closing: a closed session's locks go only once its backend has exited.
        other.execute("SELECT pg_advisory_unlock(hashtext(%s))", [content.ENCODE_LOCK])

    assert content.content_items_encode() == 1


def test_changing_the_encoder_builds_a_new_version_that_serving_switches_to(built, settings):
    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"
    settings.RECSYS_CONTENT_DIMENSIONS = 3

    outcome = content.content_sweep()  # eager Celery: the build runs inside the sweep here

    active = ActiveVersion.objects.select_related("version").get(kind=Kind.CONTENT).version
    assert outcome["building"] == active.pk != built.pk
    assert active.params["encoder"] == "tfidf-svd" and active.dimensions == 3
    assert active.encoder_state  # the fitted vocabulary, for search queries in the web process


def test_sweep_with_an_unchanged_encoder_only_encodes_marked_items(built):
    items_upsert(rows=[{"id": "soup", "text": "cold tomato soup"}])

    assert content.content_sweep() == {"building": None, "encoded": 1, "placed": 0}
    assert ModelVersion.objects.filter(kind=Kind.CONTENT).count() == 1


def test_a_failed_build_leaves_the_served_version_untouched(built, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(content, "kmeans_centroids", broken)
    version = content.content_version_create()

    with pytest.raises(RuntimeError):
        content.content_model_build(version_id=version.pk)

    version.refresh_from_db()
    assert version.status == Status.FAILED and "exploded" in version.error
    assert ActiveVersion.objects.get(kind=Kind.CONTENT).version_id == built.pk
    assert Item.objects.count() == 5


def test_the_version_encoder_is_loaded_once_per_process(built):
    assert content.version_encoder(built) is content.version_encoder(built)
    assert content.version_encoder(built, for_queries=True) is content.version_encoder(built, for_queries=True)


def test_a_fitted_encoders_state_is_read_once_per_process_not_with_every_copy_of_its_version(built, settings):
    # The serving pointer is re-read every 2 s with the state deferred; reading version.encoder_state
    # fetched the whole blob (a TF-IDF vocabulary: up to ~200 MB) each time (before)
    from django.test.utils import CaptureQueriesContext

    from embeddings.selectors import active_version_serving, active_version_serving_forget

    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"
    settings.RECSYS_CONTENT_DIMENSIONS = 3
    content.content_sweep()
    active_version_serving_forget()
    first = content.version_encoder(active_version_serving(kind=Kind.CONTENT), for_queries=True)
    active_version_serving_forget()
    copy = active_version_serving(kind=Kind.CONTENT)  # a new instance, its state deferred

    with CaptureQueriesContext(connection) as queries:
        again = content.version_encoder(copy, for_queries=True)

    assert again is first and not [q for q in queries.captured_queries if "encoder_state" in q["sql"]]
    assert again.encode(["comet"]).shape == (1, 3)


@pytest.fixture
def tfidf(settings):
    """A TF-IDF version fitted on the first two items only (the first build starts a second after the
    first batch)."""
    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"
    settings.RECSYS_CONTENT_DIMENSIONS = 2
    settings.RECSYS_CONTENT_CLUSTERS = 2
    items_upsert(rows=CATALOGUE[:2])
    return content.content_model_build(version_id=content.content_version_create().pk)


def test_a_fitted_encoder_is_built_again_once_the_catalogue_outgrows_what_it_learned(tfidf, settings):
    # Before: the first version's vocabulary (two cooking items) was kept for good, and the sky items'
    # words encoded to nothing: no vector, out of search and similar items
    items_upsert(rows=[CATALOGUE[2]])  # 3 items: not yet twice the 2 it was fitted on
    assert content.content_sweep()["building"] is None
    items_upsert(rows=[CATALOGUE[3]])

    outcome = content.content_sweep()  # eager Celery: the build runs inside the sweep

    active = ActiveVersion.objects.select_related("version").get(kind=Kind.CONTENT).version
    assert outcome["building"] == active.pk != tfidf.pk and active.counts["items"] == 4
    assert rows(active)["comet"][0] is True and rows(tfidf).get("comet", (False,))[0] is False
    settings.RECSYS_CONTENT_REFIT_GROWTH = 0  # off
    items_upsert(rows=[{"id": f"more{k}", "text": "telescope"} for k in range(8)])
    assert content.content_sweep()["building"] is None


def test_a_build_that_failed_is_not_claimed_again_every_sweep(built, settings, monkeypatch):
    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"  # a new configuration: a build is due
    monkeypatch.setattr(content, "kmeans_centroids", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(Exception):  # noqa: B017  # eager Celery: RuntimeError, wrapped as the broker failing
        content.content_sweep()  # eager: the build fails inside the sweep
    failed = ModelVersion.objects.filter(kind=Kind.CONTENT, status=Status.FAILED).count()

    outcome = content.content_sweep()

    assert outcome["building"] is None and failed == 1
    assert ModelVersion.objects.filter(kind=Kind.CONTENT, status=Status.FAILED).count() == 1
    # an outage's failure is no reason to wait: PostgreSQL gone during a build says nothing of the settings
    ModelVersion.objects.filter(kind=Kind.CONTENT, status=Status.FAILED).update(error="OperationalError: gone")
    with pytest.raises(Exception):  # noqa: B017  # the build is claimed again (and fails again here)
        content.content_sweep()
    settings.RECSYS_CONTENT_RETRY_AFTER_FAILURE_SECONDS = 0
    with pytest.raises(Exception):  # noqa: B017  # eager Celery: RuntimeError, wrapped as the broker failing
        content.content_sweep()  # tried again once the pause is over


def test_while_a_build_runs_new_items_still_reach_the_served_version(built, settings):
    # Before: the sweep returned on the build's lease and encoded nothing for the build's whole run
    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"
    content.content_version_create()  # a build claimed (on the training queue, still running)
    items_upsert(rows=[{"id": "late", "text": "comet tails"}])

    outcome = content.content_sweep()

    assert outcome == {"building": None, "encoded": 1}
    assert rows(built)["late"][0] is True
