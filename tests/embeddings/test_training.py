"""Collaborative training runs: versions, metrics, the quality gate, leases, rollback, pruning."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from embeddings import runs, services
from embeddings.learners import LearnerParams
from embeddings.models import ActiveVersion, ModelVersion, Status
from embeddings.selectors import active_version

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


@override_settings(RECSYS_KEEP_VERSIONS=2)
def test_old_versions_are_pruned_by_dropping_their_tables(communities):
    first, _, third = train(), train(), train()

    pruned = ModelVersion.objects.get(pk=first.pk)
    assert pruned.status == Status.RETIRED and not pruned.has_tables
    with pytest.raises(runs.ModelVersionNotReady):
        runs.model_version_activate(version_id=first.pk)
    assert active_version(kind="collaborative").pk == third.pk


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
