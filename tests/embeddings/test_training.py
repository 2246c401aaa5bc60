"""Collaborative training runs: versions, metrics, the quality gate, leases, rollback, pruning."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from embeddings import runs, services
from embeddings.learners import LearnerParams
from embeddings.models import ActiveVersion, Kind, ModelVersion, Status
from embeddings.selectors import active_version
from recsys.services import interactions_ingest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_tuning")]


@pytest.fixture
def no_tuning(settings):
    settings.RECSYS_CF_TUNE = False


PARAMS = LearnerParams(factors=8, iterations=8)


def train() -> ModelVersion:
    version = services.collaborative_version_create(params=PARAMS)
    return services.collaborative_model_train(version_id=version.pk)


def count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def test_a_run_stores_vectors_metrics_and_becomes_active(communities):
    version = train()

    assert version.status == Status.ACTIVE and active_version(kind="collaborative") == version
    assert (count(version.item_table), count(version.user_table)) == (30, 40)
    assert version.dimensions == 8 and version.counts["interactions"] == 240
    assert version.metrics["ndcg@10"] > version.baseline_metrics["ndcg@10"]
    assert set(version.timings) == {"load", "evaluate", "fit", "store", "ann", "content_map"}


def test_a_worse_version_stays_ready_and_serving_is_unchanged(communities):
    first = train()
    ModelVersion.objects.filter(pk=first.pk).update(metrics={"ndcg@10": 1.0})

    second = train()

    assert second.status == Status.READY
    assert active_version(kind="collaborative").pk == first.pk


def test_a_version_whose_index_misses_its_top_10_does_not_replace_one_that_serves_it(communities):
    # Given an active version whose index finds its top 10, and a ready one that scores better
    # exactly but whose index finds only 70% of its top-10 slots
    first, second = train(), train()
    runs.model_version_activate(version_id=first.pk)
    ModelVersion.objects.filter(pk=first.pk).update(metrics={"ndcg@10": 0.30, "ann_recall@10": 0.99})
    ModelVersion.objects.filter(pk=second.pk).update(metrics={"ndcg@10": 0.31, "ann_recall@10": 0.70})

    # Then the gate keeps serving the first; once the second's index serves it, it is activated
    assert runs.model_version_activate_if_better(version_id=second.pk).status == Status.READY
    assert active_version(kind="collaborative").pk == first.pk
    ModelVersion.objects.filter(pk=second.pk).update(metrics={"ndcg@10": 0.31, "ann_recall@10": 0.99})
    assert runs.model_version_activate_if_better(version_id=second.pk).status == Status.ACTIVE


def test_a_failed_run_is_marked_and_leaves_serving_alone(communities, monkeypatch):
    first = train()

    def broken(*args, **kwargs):
        raise MemoryError("worker ran out of memory")

    monkeypatch.setattr("embeddings.services.fit", broken)
    claimed = services.collaborative_version_create(params=PARAMS)
    with pytest.raises(MemoryError):
        services.collaborative_model_train(version_id=claimed.pk)

    failed = ModelVersion.objects.get(pk=claimed.pk)
    assert failed.status == Status.FAILED and "out of memory" in failed.error
    assert not failed.has_tables
    assert active_version(kind="collaborative").pk == first.pk


def test_training_without_interactions_fails_cleanly():
    claimed = services.collaborative_version_create(params=PARAMS)

    with pytest.raises(ValueError, match="no interactions"):
        services.collaborative_model_train(version_id=claimed.pk)

    assert ModelVersion.objects.get(pk=claimed.pk).status == Status.FAILED
    assert not ActiveVersion.objects.exists()


def test_a_second_claim_is_refused_until_the_lease_expires():
    running = services.collaborative_version_create(params=PARAMS)

    with pytest.raises(runs.TrainingAlreadyRunning):
        services.collaborative_version_create(params=PARAMS)

    ModelVersion.objects.filter(pk=running.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.collaborative_version_create(params=PARAMS).pk != running.pk
    abandoned = ModelVersion.objects.get(pk=running.pk)
    assert abandoned.status == Status.FAILED and "lease" in abandoned.error


def test_rollback_activates_an_older_version(communities):
    first, second = train(), train()
    assert active_version(kind="collaborative").pk == second.pk

    runs.model_version_activate(version_id=first.pk)

    assert active_version(kind="collaborative").pk == first.pk
    assert ModelVersion.objects.get(pk=second.pk).status == Status.READY


@override_settings(RECSYS_KEEP_VERSIONS=2, RECSYS_PRUNE_GRACE_SECONDS=0)
def test_old_versions_are_pruned_by_dropping_their_tables(communities):
    first, _, third = train(), train(), train()

    pruned = ModelVersion.objects.get(pk=first.pk)
    assert pruned.status == Status.RETIRED and not pruned.has_tables
    with pytest.raises(runs.ModelVersionNotReady):
        runs.model_version_activate(version_id=first.pk)
    assert active_version(kind="collaborative").pk == third.pk


@override_settings(RECSYS_KEEP_VERSIONS=1)
def test_a_version_that_served_keeps_its_tables_through_the_grace_and_the_beat_prunes_it_after(communities):
    first, second = train(), train()  # the first served until just now: other processes may still read it

    assert ModelVersion.objects.get(pk=first.pk).has_tables
    assert runs.model_versions_prune(kind="collaborative", keep=1) == []

    later = timezone.now() + timedelta(seconds=settings.RECSYS_PRUNE_GRACE_SECONDS + 1)
    assert runs.model_versions_prune(kind="collaborative", keep=1, now=later) == [first.pk]
    assert ModelVersion.objects.get(pk=second.pk).has_tables


@override_settings(RECSYS_KEEP_VERSIONS=1, RECSYS_PRUNE_GRACE_SECONDS=0)
def test_a_drop_behind_a_long_reader_of_the_catalogue_gives_up_at_once_and_the_beat_drops_it_later(communities):
    # Given a first version, and another session reading the catalogue in a long transaction (an
    # export): dropping a version's table needs an ACCESS EXCLUSIVE lock on recsys_item too
    first = train()
    reader = psycopg.connect(**connection.get_connection_params())
    reader.execute("SELECT count(*) FROM recsys_item")  # holds ACCESS SHARE until its transaction ends
    try:
        # When a second version is activated (its prune drops the first's tables)
        started = time.monotonic()
        second = train()
        # Then the drop gave up after its lock timeout (the catalogue's queries waited no longer)
        assert ModelVersion.objects.get(pk=first.pk).has_tables
        assert active_version(kind="collaborative").pk == second.pk
    finally:
        reader.close()
    assert time.monotonic() - started < 30
    # and the beat's tidying drops it once the reader is gone
    assert runs.versions_tidy() == [first.pk]
    assert not ModelVersion.objects.get(pk=first.pk).has_tables


def test_tuning_searches_ease_and_als_and_keeps_the_best_on_validation(communities, settings):
    settings.RECSYS_CF_TUNE = True
    settings.RECSYS_CF_TUNE_MAX_EVALS = 4

    version = train()

    tried = version.progress["candidates"]
    best = max(tried, key=lambda c: c["ndcg@10"])
    assert [c["algorithm"] for c in tried] == ["ease"] * 4 + ["als"] * 4
    assert version.algorithm == best["algorithm"]
    assert version.params["weight_scale"] == pytest.approx(8.0)  # every event is a purchase (weight 8)
    assert version.metrics["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-5)
    assert version.progress["tuning_sample"]["fraction"] == 1.0  # 240 interactions: no sample
    assert 0 < version.timings["search"] and "evaluate" in version.timings


def test_past_the_sample_size_the_search_runs_on_a_user_sample_and_the_winner_on_everything(communities, settings):
    # Given a sample size below the data's (the setting refuses < 10,000 from the environment; tests go lower)
    settings.RECSYS_CF_TUNE = True
    settings.RECSYS_CF_TUNE_MAX_EVALS = 3
    settings.RECSYS_CF_TUNE_SAMPLE_INTERACTIONS = 100

    version = train()

    # Then the candidates saw part of the users, and the version holds vectors for all of them
    sample = version.progress["tuning_sample"]
    assert sample["interactions"] <= 100 and 0 < sample["fraction"] < 0.6
    assert sample["users"] < version.counts["users"] == count(version.user_table)


def test_past_the_sample_size_the_winner_is_not_refitted_on_the_whole_split_for_its_metrics(
    communities, settings, monkeypatch
):
    # Given a run whose search sees a user sample (below the data's size)
    settings.RECSYS_CF_TUNE = True
    settings.RECSYS_CF_TUNE_MAX_EVALS = 3
    settings.RECSYS_CF_TUNE_SAMPLE_INTERACTIONS = 100
    fitted = _fits_recorded(monkeypatch)

    version = train()

    # Then the run's own fits are the final one on everything only, and the metrics are the sample's
    assert fitted == [version.counts["interactions"]]
    assert version.metrics["users"] <= version.progress["tuning_sample"]["users"]
    assert version.baseline_metrics["users"] == version.metrics["users"]
    best = max(version.progress["candidates"], key=lambda c: c["ndcg@10"])
    assert version.algorithm == best["algorithm"]


def test_metrics_from_a_refit_on_the_whole_split_when_configured(communities, settings, monkeypatch):
    settings.RECSYS_CF_TUNE = True
    settings.RECSYS_CF_TUNE_MAX_EVALS = 3
    settings.RECSYS_CF_TUNE_SAMPLE_INTERACTIONS = 100
    settings.RECSYS_CF_METRICS_FROM_SAMPLE = False
    fitted = _fits_recorded(monkeypatch)

    version = train()

    # the winner on the 80% split (all but the test fifth), then on everything
    assert len(fitted) == 2 and fitted[0] < fitted[1] == version.counts["interactions"]
    assert version.metrics["users"] > version.progress["tuning_sample"]["users"]


def _fits_recorded(monkeypatch) -> list[int]:
    """The non-zeros of every matrix the run itself fits on (the search's candidates fit elsewhere)."""
    fitted: list[int] = []
    real = services.fit

    def recording(matrix, params, **kwargs):
        fitted.append(int(matrix.nnz))
        return real(matrix, params, **kwargs)

    monkeypatch.setattr(services, "fit", recording)
    return fitted


def test_interactions_load_reads_every_stored_event_from_the_binary_copy(communities, monkeypatch):
    """The binary COPYs of id ranges, each one row of arrays, are decoded a range at a time (short GIL
    holds for the run's heartbeat); range boundaries change nothing, and the matrix holds exactly the
    stored events, with or without time decay."""
    from recsys.models import Interaction

    whole = services.interactions_load(half_life_days=None)
    monkeypatch.setattr(services, "_INTERACTIONS_RANGE_ROWS", 7)

    chunked = services.interactions_load(half_life_days=None)
    decayed = services.interactions_load(half_life_days=1e9, now=0.0)  # the timestamps' arrays come too

    assert (chunked.matrix != whole.matrix).nnz == 0 and whole.matrix.nnz == 240
    assert abs(decayed.matrix - whole.matrix).max() < 1e-3
    assert (chunked.user_ids == whole.user_ids).all() and (chunked.item_ids == whole.item_ids).all()
    stored = Interaction.objects.order_by("user_id", "item_id").values_list("user_id", "item_id", "weight")
    coo = whole.matrix.tocoo()
    rows = {(whole.user_ids[u], whole.item_ids[i]): w for u, i, w in zip(coo.row, coo.col, coo.data, strict=True)}
    assert sorted(rows) == [(u, i) for u, i, _ in stored]
    assert all(rows[(u, i)] == pytest.approx(w) for u, i, w in stored)


def test_impressions_never_used_enter_training_as_weak_negatives_when_configured(communities, settings):
    from recsys.services import impressions_ingest

    # u0 was shown i0..i29; of those it used 6 (its interactions): 24 weak negatives, plus one for u1.
    shown = [{"user": "u0", "items": [f"i{n}" for n in range(30)]}, {"user": "u1", "items": ["i29", "ghost"]}]
    assert not impressions_ingest(rows=shown).errors
    settings.RECSYS_IMPRESSION_NEGATIVE_WEIGHT = 0.5

    version = train()

    # "ghost" (a stub item created by the impression) has no interaction, so no column: ignored.
    assert version.counts["weak_negatives"] == 24 + 1
    assert version.status == Status.ACTIVE


def test_weak_negatives_are_off_by_default(communities):
    from recsys.services import impressions_ingest

    assert not impressions_ingest(rows=[{"user": "u0", "items": ["i29"]}]).errors
    assert "weak_negatives" not in train().counts


# ---- a version whose index cannot serve its model is cut to fewer dimensions ----------------------


@pytest.fixture
def tastes(db: None) -> None:
    """300 users in 6 taste communities over 120 items, 12 interactions each: enough items for
    EASE at 64 dimensions and its cuts to 32 and 16."""
    rng = np.random.default_rng(5)
    rows = []
    for user in range(300):
        pool = range(20 * (user % 6), 20 * (user % 6) + 20)
        for item in rng.choice(list(pool), size=12, replace=False):
            rows.append(
                {"user": f"u{user}", "item": f"i{item}", "type": "purchase", "timestamp": "2026-01-01T00:00:00Z"}
            )
    assert not interactions_ingest(rows=rows).errors


EASE = LearnerParams(algorithm="ease", factors=64, regularization=50.0)


def _index_recall_by_dimensions(monkeypatch, recall: dict[int, float]) -> list[int]:
    """The real ef_search tuning on the real index, then its recall@10 replaced by ``recall`` for the
    listed dimensions: an inner-product HNSW graph that fails a geometry (BENCHMARKS.md, scale-10m:
    10M interactions) cannot be built from a test's few hundred items, where the index is exact.
    Returns the dimensions measured, in order."""
    measured: list[int] = []
    real = services.version_ef_search_tune

    def tune(version, *, item_vectors, **kwargs):
        real(version, item_vectors=item_vectors, **kwargs)
        dimensions = item_vectors.shape[1]
        measured.append(dimensions)
        if dimensions in recall:
            version.metrics["ann_recall@10"] = recall[dimensions]

    monkeypatch.setattr(services, "version_ef_search_tune", tune)
    return measured


def _svds_counted(monkeypatch) -> list[int]:
    """The rank of every truncated SVD computed."""
    from embeddings import learners

    ranks: list[int] = []
    real = learners.truncated_svd

    def counted(matrix, factors, **kwargs):
        ranks.append(factors)
        return real(matrix, factors, **kwargs)

    monkeypatch.setattr(learners, "truncated_svd", counted)
    return ranks


def _stored_dimensions(version: ModelVersion) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT vector_dims(embedding) FROM {version.item_table} LIMIT 1")
        return int(cursor.fetchone()[0])


def test_an_ease_version_whose_index_misses_its_top_10_is_served_at_fewer_dimensions(tastes, monkeypatch):
    # Given an EASE version whose 64-d index finds half its users' top 10, and whose 32-d one all of it
    measured = _index_recall_by_dimensions(monkeypatch, {64: 0.5})
    svds = _svds_counted(monkeypatch)

    version = services.collaborative_model_train(version_id=services.collaborative_version_create(params=EASE).pk)

    # Then it is stored, measured and served at 32 dimensions, cut from the same SVDs (the split's for
    # its score, everything's for its vectors: no third), and no 16: 32 serves it
    assert measured == [64, 32] and svds == [64, 64]
    assert version.status == Status.ACTIVE and version.dimensions == 32 == _stored_dimensions(version)
    assert (version.params["factors"], version.params["svd_rank"]) == (32, 64)
    assert version.metrics["ann_recall@10"] >= 0.995
    assert version.metrics["cut_from_dimensions"] == 64 and version.metrics["cut_from_ann_recall@10"] == 0.5
    assert version.metrics["ndcg@10"] > 0.5 * version.metrics["cut_from_ndcg@10"]
    assert "servable" in version.timings and count(version.user_table) == 300


def test_a_cut_that_serves_less_puts_the_rank_before_it_back(tastes, monkeypatch):
    # Given a 64-d index at recall 0.9 and a 32-d one that would find even less of its top 10
    measured = _index_recall_by_dimensions(monkeypatch, {64: 0.9, 32: 0.1})

    version = services.collaborative_model_train(version_id=services.collaborative_version_create(params=EASE).pk)

    # Then the 32-d cut was stored and measured, and the 64-d vectors are what the version holds
    assert measured == [64, 32, 64]
    assert version.dimensions == 64 == _stored_dimensions(version) and version.params["factors"] == 64
    assert version.metrics["ann_recall@10"] == 0.9 and "cut_from_dimensions" not in version.metrics


def test_an_index_that_serves_its_model_is_left_as_it_is(tastes, monkeypatch):
    measured = _index_recall_by_dimensions(monkeypatch, {})

    version = services.collaborative_model_train(version_id=services.collaborative_version_create(params=EASE).pk)

    assert measured == [64] and version.dimensions == 64 and "servable" not in version.timings


def test_past_the_sample_size_a_cut_is_scored_with_the_searchs_own_fit(tastes, settings, monkeypatch):
    # Given a search on a user sample whose EASE winner's index misses half its top 10 at 64, 40% at 32
    settings.RECSYS_CF_TUNE = True
    settings.RECSYS_CF_TUNE_MAX_EVALS = 3
    settings.RECSYS_CF_TUNE_SAMPLE_INTERACTIONS = 2_000
    settings.RECSYS_CF_SERVING_TOLERANCE = 0.0  # the search serves its best (64-d), not a probe within one error
    fitted = _fits_recorded(monkeypatch)
    _index_recall_by_dimensions(monkeypatch, {64: 0.5, 32: 0.6})

    version = services.collaborative_model_train(version_id=services.collaborative_version_create(params=EASE).pk)

    # Then it is served cut, each cut scored on the sample's users from the search's own SVD (the
    # run fits only on everything: the winner, then each cut from that fit's SVD)
    assert version.dimensions < version.metrics["cut_from_dimensions"]
    assert version.metrics["users"] <= version.progress["tuning_sample"]["users"]
    assert len(fitted) >= 2 and set(fitted) == {version.counts["interactions"]}


def test_a_run_that_fails_while_storing_a_cut_is_marked_failed_and_leaves_no_tables(tastes, monkeypatch):
    # Given an active version, and a run whose 64-d index cannot serve it and whose cut's store fails
    # after the 64-d tables were dropped
    _index_recall_by_dimensions(monkeypatch, {})
    first = services.collaborative_model_train(version_id=services.collaborative_version_create(params=EASE).pk)
    _index_recall_by_dimensions(monkeypatch, {64: 0.5})
    real, stores = services._store, []

    def store(version, data, factors):
        stores.append(factors.dimensions)
        if len(stores) > 1:
            raise OSError("disk full")
        real(version, data, factors)

    monkeypatch.setattr(services, "_store", store)
    claimed = services.collaborative_version_create(params=EASE)
    with pytest.raises(OSError):
        services.collaborative_model_train(version_id=claimed.pk)

    # Then the run is failed with nothing of it left, and serving is untouched
    failed = ModelVersion.objects.get(pk=claimed.pk)
    assert stores == [64, 32] and failed.status == Status.FAILED and "disk full" in failed.error
    assert not failed.has_tables and not _table_exists(failed.item_table)
    assert active_version(kind="collaborative").pk == first.pk


def _table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return bool(cursor.fetchone()[0])


def test_a_version_that_serves_less_than_popularity_is_not_served_even_as_the_first(communities):
    # Given a ready version and no active one, whose index finds half its top 10: it serves NDCG@10
    # 0.15, where popularity scores 0.20 on the same validation split
    version = train()
    ActiveVersion.objects.all().delete()
    ModelVersion.objects.filter(pk=version.pk).update(
        status=Status.READY, metrics={"ndcg@10": 0.30, "ann_recall@10": 0.5}, baseline_metrics={"ndcg@10": 0.20}
    )

    # Then it stays ready (users keep the popular and content paths); once its index serves it, it is served
    assert runs.model_version_activate_if_better(version_id=version.pk).status == Status.READY
    assert active_version(kind="collaborative") is None
    ModelVersion.objects.filter(pk=version.pk).update(metrics={"ndcg@10": 0.30, "ann_recall@10": 0.99})
    assert runs.model_version_activate_if_better(version_id=version.pk).status == Status.ACTIVE


def test_the_beats_tidying_prunes_each_kind_once_however_many_versions_there_are(communities, monkeypatch):
    train(), train(), train()
    calls = []
    monkeypatch.setattr(runs, "model_versions_prune", lambda **kwargs: calls.append(kwargs["kind"]) or [])

    runs.versions_tidy()

    assert sorted(calls) == sorted(Kind.values)  # (a DISTINCT over the ordered model gave one per version)
