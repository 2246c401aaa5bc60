"""Per-variant metrics from impressions and attributions, and the test against the control, as the
experiment's GET reports them after the metrics task ran."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from experiments.metrics import experiment_metrics_compute, experiments_metrics_compute, variants_data
from experiments.models import Experiment, Variant, VariantSnapshot
from experiments.statistics import ctr_estimate
from recsys.models import Attribution, Impression, Item, User
from recsys.recommendation_ids import recommendation_id_mint

pytestmark = pytest.mark.django_db
START = datetime.now(UTC) - timedelta(hours=2)


@pytest.fixture
def experiment(db) -> Experiment:
    experiment = Experiment.objects.create(name="ab", control="a", started_at=START)
    Variant.objects.bulk_create(
        [Variant(experiment=experiment, name="a", weight=1), Variant(experiment=experiment, name="b", weight=1)]
    )
    return experiment


@pytest.fixture
def catalogue(db) -> list[Item]:
    Item.objects.bulk_create([Item(external_id=f"i{n}", attributes={"price": n + 0.5}) for n in range(40)])
    Item.objects.bulk_create([Item(external_id="hidden", is_hidden=True)])
    return list(Item.objects.filter(is_hidden=False).order_by("id"))


def traffic(experiment, variant, users, items, *, shown_per_user, click_rate, rng, prefix=None) -> None:
    """Each user sees ``shown_per_user`` items in one answer; each shown item is clicked with probability
    ``click_rate`` (a click-type attributed event carrying the impression's time and id)."""
    people = User.objects.bulk_create([User(external_id=f"{prefix or variant}-{n}") for n in range(users)])
    impressions, attributions = [], []
    for k, person in enumerate(people):
        shown_at = START + timedelta(seconds=k)
        rid = recommendation_id_mint(experiment_id=experiment.pk, variant=variant)
        for position, item in enumerate(rng.choice(len(items), size=shown_per_user, replace=False), start=1):
            impressions.append(
                Impression(
                    user=person,
                    item=items[item],
                    position=position,
                    shown_at=shown_at,
                    recommendation_id=rid,
                    experiment_id=experiment.pk,
                    variant=variant,
                )
            )
            if rng.random() < click_rate:
                attributions.append(attribution(experiment, variant, person, items[item], "click", shown_at, rid))
    Impression.objects.bulk_create(impressions)
    Attribution.objects.bulk_create(attributions)


def attribution(experiment, variant, user, item, event_type, shown_at, rid, minutes=1) -> Attribution:
    return Attribution(
        user=user,
        item=item,
        event_type=event_type,
        occurred_at=shown_at + timedelta(minutes=minutes),
        weight=1.0,
        recommendation_id=rid,
        experiment_id=experiment.pk,
        variant=variant,
        shown_at=shown_at,
        position=1,
    )


def report(admin_client_api, experiment) -> dict[str, dict]:
    response = admin_client_api.get(f"/api/v1/experiments/{experiment.pk}")
    assert response.status_code == 200, response.content
    return {v["name"]: v for v in response.json()["variants"]}


def test_counts_clicks_conversions_coverage_and_revenue_per_variant(admin_client_api, experiment, catalogue, settings):
    settings.RECSYS_REVENUE_ATTRIBUTE = "price"
    ann, bob, cat = User.objects.bulk_create([User(external_id=n) for n in ("ann", "bob", "cat")])
    rid = recommendation_id_mint(experiment_id=experiment.pk, variant="a")
    shown = [
        Impression(
            user=ann,
            item=catalogue[k],
            position=k + 1,
            shown_at=START,
            recommendation_id=rid,
            experiment_id=experiment.pk,
            variant="a",
        )
        for k in range(4)
    ]
    shown += [
        Impression(user=bob, item=catalogue[0], position=1, shown_at=START, experiment_id=experiment.pk, variant="a")
    ]
    shown += [
        Impression(
            user=cat, item=catalogue[k], position=k + 1, shown_at=START, experiment_id=experiment.pk, variant="b"
        )
        for k in range(3)
    ]
    Impression.objects.bulk_create(shown)
    Attribution.objects.bulk_create(
        [
            attribution(experiment, "a", ann, catalogue[0], "click", START, rid),
            attribution(experiment, "a", ann, catalogue[0], "click", START, rid, minutes=2),  # same impression again
            attribution(experiment, "a", ann, catalogue[1], "purchase", START, rid),
            attribution(experiment, "a", ann, catalogue[2], "purchase", START, rid),
            attribution(experiment, "a", bob, catalogue[0], "add_to_cart", START, None),
            # A click carrying an answer's id whose impressions never arrived: a conversion, not a clicked impression.
            attribution(experiment, "b", cat, catalogue[9], "click", START, "r1.unknown", minutes=3),
        ]
    )
    for row in Attribution.objects.filter(recommendation_id="r1.unknown"):
        Attribution.objects.filter(pk=row.pk).update(shown_at=None)

    experiment_metrics_compute(experiment_id=experiment.pk)
    variants = report(admin_client_api, experiment)

    a, b = variants["a"], variants["b"]
    assert (a["users"], a["impressions"], a["clicks"]) == (2, 5, 4)  # ann: 3 clicked items, bob: 1
    assert a["ctr"] == pytest.approx(4 / 5)
    assert a["ctr_interval"][0] < 0.8 < a["ctr_interval"][1]
    assert a["conversions"] == {"add_to_cart": 1, "click": 2, "purchase": 2}
    assert a["revenue"] == pytest.approx(1.5 + 2.5)  # the two purchases' item prices
    assert a["items_shown"] == 4 and a["coverage"] == pytest.approx(4 / 40)  # the hidden item is not catalogue
    assert (b["users"], b["impressions"], b["clicks"], b["conversions"]) == (1, 3, 0, {"click": 1})
    assert a["p_value"] is None and a["reason"] == "the control"
    assert b["p_value"] is None  # far too few users for a test
    assert b["method"] and b["reason"]


def test_revenue_is_null_when_no_attribute_carries_a_price(admin_client_api, experiment, catalogue, settings):
    settings.RECSYS_REVENUE_ATTRIBUTE = ""
    experiment_metrics_compute(experiment_id=experiment.pk)
    assert report(admin_client_api, experiment)["a"]["revenue"] is None


def test_truly_better_variant_is_reported_significantly_better(admin_client_api, experiment, catalogue):
    rng = np.random.default_rng(11)
    traffic(experiment, "a", 1_500, catalogue, shown_per_user=10, click_rate=0.10, rng=rng)
    traffic(experiment, "b", 1_500, catalogue, shown_per_user=10, click_rate=0.13, rng=rng)

    experiment_metrics_compute(experiment_id=experiment.pk)
    b = report(admin_client_api, experiment)["b"]

    assert b["difference"] > 0
    assert b["p_value"] is not None and b["p_value"] < 0.05
    assert b["significant"] is True
    assert b["difference_interval"][0] > 0
    assert "mSPRT" in b["method"]


def test_equal_variants_are_not_reported_different(admin_client_api, experiment, catalogue):
    rng = np.random.default_rng(5)
    traffic(experiment, "a", 800, catalogue, shown_per_user=10, click_rate=0.10, rng=rng)
    traffic(experiment, "b", 800, catalogue, shown_per_user=10, click_rate=0.10, rng=rng)

    for _ in range(3):  # the page is looked at repeatedly: the running p-value stays valid
        experiment_metrics_compute(experiment_id=experiment.pk)
    b = report(admin_client_api, experiment)["b"]

    assert b["significant"] is False
    assert b["p_value"] is not None and b["p_value"] > 0.05
    assert b["users_needed"] is not None and b["users_needed"] > 0
    assert VariantSnapshot.objects.filter(experiment=experiment).count() == 6


def test_the_task_computes_running_experiments_and_skips_long_stopped_ones(experiment, catalogue):
    old = Experiment.objects.create(
        name="old", control="a", status="stopped", scenario="x", stopped_at=datetime.now(UTC) - timedelta(days=2)
    )
    Variant.objects.create(experiment=old, name="a", weight=1)

    assert experiments_metrics_compute() == [experiment.pk]
    assert VariantSnapshot.objects.filter(experiment=experiment).count() == 2


def test_a_stopped_experiment_gets_its_settled_snapshot_once_though_the_beat_missed_its_last_hour(
    experiment, catalogue
):
    # Given an experiment stopped 90 minutes ago whose last snapshot was taken 10 minutes after it
    # stopped (workers or PostgreSQL away for the rest of its settling hour)
    stopped = datetime.now(UTC) - timedelta(minutes=90)
    Experiment.objects.filter(pk=experiment.pk).update(status="stopped", stopped_at=stopped)
    experiment_metrics_compute(experiment_id=experiment.pk, now=stopped + timedelta(minutes=10))

    # Then the next beat computes its settled figures, and the one after leaves them alone
    assert experiments_metrics_compute() == [experiment.pk]
    assert experiments_metrics_compute() == []
    assert VariantSnapshot.objects.filter(experiment=experiment).count() == 4


def test_the_celery_task_writes_snapshots(experiment, catalogue):
    from experiments.tasks import experiment_metrics_compute as task

    assert task() == [experiment.pk]  # the beat entry point, run in this process
    assert VariantSnapshot.objects.filter(experiment=experiment).count() == 2


def test_with_two_treatments_each_is_tested_at_half_the_alpha(admin_client_api, experiment, catalogue):
    Variant.objects.create(experiment=experiment, name="c", weight=1)
    rng = np.random.default_rng(11)
    traffic(experiment, "a", 1_500, catalogue, shown_per_user=10, click_rate=0.10, rng=rng)
    traffic(experiment, "b", 1_500, catalogue, shown_per_user=10, click_rate=0.13, rng=rng)
    traffic(experiment, "c", 1_500, catalogue, shown_per_user=10, click_rate=0.10, rng=rng)

    experiment_metrics_compute(experiment_id=experiment.pk)
    variants = report(admin_client_api, experiment)

    for name in ("b", "c"):
        snapshot = VariantSnapshot.objects.get(experiment=experiment, variant__name=name)
        assert snapshot.statistics["comparison_alpha"] == 0.025
        assert "each tested at alpha / 2 = 0.025 (Bonferroni)" in variants[name]["method"]
        assert variants[name]["significant"] == (variants[name]["p_value"] <= 0.025)
    assert variants["b"]["significant"] is True
    # Each variant's own band is at the experiment's alpha, the control's and the treatments' alike: only
    # the differences are tested at alpha / 2 (the treatments' bands were at 0.025, the control's at 0.05)
    for name in ("a", "b", "c"):
        snapshot = VariantSnapshot.objects.get(experiment=experiment, variant__name=name)
        counts = variants_data(experiment_id=experiment.pk)[name].counts()
        assert variants[name]["ctr_interval"] == pytest.approx(list(ctr_estimate(counts, alpha=0.05)[1]))
        assert "control_interval" not in snapshot.statistics


def test_prices_past_a_floats_range_leave_revenue_unknown_and_every_read_working(
    admin_client_api, experiment, catalogue, settings
):
    # Given purchases of an item priced 1e308 (two by one user, one each by two others: each pair's sum
    # is past a float) and one priced with 400 digits
    settings.RECSYS_REVENUE_ATTRIBUTE = "price"
    Item.objects.filter(pk=catalogue[0].pk).update(attributes={"price": 1e308})
    Item.objects.filter(pk=catalogue[1].pk).update(attributes={"price": int("9" * 400)})
    ann, bob, cat, dan = User.objects.bulk_create([User(external_id=n) for n in ("ann", "bob", "cat", "dan")])
    rid = recommendation_id_mint(experiment_id=experiment.pk, variant="a")
    Attribution.objects.bulk_create(
        [
            attribution(experiment, "a", ann, catalogue[0], "purchase", START, rid),
            attribution(experiment, "a", ann, catalogue[0], "purchase", START, rid, minutes=2),
            attribution(experiment, "b", bob, catalogue[1], "purchase", START, rid),
            attribution(experiment, "b", cat, catalogue[0], "purchase", START, rid),
            attribution(experiment, "b", dan, catalogue[0], "purchase", START, rid),
        ]
    )

    # When the metrics are computed (they failed, and failed again every minute)
    experiment_metrics_compute(experiment_id=experiment.pk)

    # Then the revenue is unknown rather than infinite, and the experiment reads (it was a 500)
    variants = report(admin_client_api, experiment)
    assert variants["a"]["revenue"] is None and variants["b"]["revenue"] is None
    assert admin_client_api.get("/api/v1/experiments").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_two_experiments_of_one_placement_promoted_at_once_leave_the_later_one_serving(monkeypatch):
    # Given two stopped experiments of the same placement, the first's promotion paused before it commits
    import threading

    from django.db import connection

    from experiments import services

    pair = []
    for name in ("first", "second"):
        experiment = Experiment.objects.create(
            name=name, control="a", scenario="home", started_at=START, status="stopped", stopped_at=START
        )
        Variant.objects.bulk_create([Variant(experiment=experiment, name=v, weight=1) for v in ("a", "b")])
        pair.append(experiment)
    paused, release = threading.Event(), threading.Event()
    changed = services._running_changed

    def running_changed():
        if threading.current_thread().name == "first":
            paused.set()
            assert release.wait(30)
        changed()

    monkeypatch.setattr(services, "_running_changed", running_changed)
    failures = []

    def promote(experiment):
        try:
            services.experiment_promote(experiment_id=experiment.pk, variant="b")
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=promote, args=(pair[0],), name="first")
    second = threading.Thread(target=promote, args=(pair[1],), name="second")
    first.start()
    assert paused.wait(30)
    second.start()  # the second promotion while the first holds its transaction open
    waiting_for_a_lock(seconds=5)

    release.set()
    first.join(30)
    second.join(30)

    # Then both succeeded (the second was a 500), and the later one's winner serves the placement
    assert not failures
    serving = list(Experiment.objects.filter(serves_placement=True).values_list("name", flat=True))
    assert serving == ["second"]


def waiting_for_a_lock(*, seconds: float) -> None:
    """Returns once some session of this database waits for a lock (or after ``seconds``)."""
    import time

    from django.db import connection

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(  # a row's or an advisory lock (this database), or another transaction's end (no database)
                "SELECT count(*) FROM pg_locks l LEFT JOIN pg_database d ON d.oid = l.database "
                "WHERE NOT l.granted AND (d.datname = current_database() OR l.database IS NULL)"
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.02)
