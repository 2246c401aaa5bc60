"""The Experiments pages of the operator admin: list, detail with metrics and chart, stop, promote and
withdraw with CSRF and the change permission; the dashboard's CTR per model version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from experiments.models import Experiment, ExperimentStatus, Variant, VariantSnapshot

pytestmark = pytest.mark.django_db
NOW = datetime.now(UTC)


@pytest.fixture
def experiment(db) -> Experiment:
    experiment = Experiment.objects.create(name="colours", control="a", started_at=NOW - timedelta(hours=1))
    a = Variant.objects.create(experiment=experiment, name="a", weight=3, config={"strategy": "collaborative"})
    b = Variant.objects.create(experiment=experiment, name="b", weight=1, config={"model_version": 7})
    for minutes, (ctr_a, ctr_b) in enumerate([(0.10, 0.12), (0.11, 0.14)]):
        at = NOW - timedelta(minutes=10 - minutes)
        for variant, ctr, extra in ((a, ctr_a, {}), (b, ctr_b, {"p_value": 0.012, "significant": True})):
            VariantSnapshot.objects.create(
                experiment=experiment,
                variant=variant,
                computed_at=at,
                users=500,
                impressions=5_000,
                clicks=int(5_000 * ctr),
                items_shown=30,
                coverage=0.5,
                conversions={"purchase": 17},
                statistics={
                    "ctr": ctr,
                    "ctr_interval": [ctr - 0.01, ctr + 0.01],
                    "method": "mSPRT, always valid",
                    **extra,
                },
            )
    return experiment


def test_experiment_pages_need_a_staff_login(client, experiment):
    for url in ["/admin/experiments/", f"/admin/experiments/{experiment.pk}/"]:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_list_links_each_experiment_with_its_variants(admin_client, experiment):
    html = admin_client.get("/admin/experiments/").content.decode()
    assert f'href="/admin/experiments/{experiment.pk}/"' in html
    assert "a (3), b (1)" in html
    assert 'href="/admin/experiments/"' in admin_client.get("/admin/").content.decode()  # linked from the index


def test_detail_shows_traffic_metrics_intervals_the_test_and_a_chart(admin_client, experiment):
    html = admin_client.get(f"/admin/experiments/{experiment.pk}/").content.decode()

    assert "0.75" in html and "0.25" in html  # the traffic split
    assert "0.1100 [0.1000, 0.1200]" in html  # the control's latest CTR and interval
    assert "0.0120" in html  # b's p-value
    assert "mSPRT, always valid" in html
    assert html.count("<polyline") == 2 and 'data-variant="b"' in html
    assert "<script" not in html.split('id="ctr-chart"')[1].split("</div>")[0]  # markup only
    assert 'id="stop-experiment"' in html and "csrfmiddlewaretoken" in html


def test_stop_and_promote_need_csrf_and_the_change_permission(experiment):
    staff = get_user_model().objects.create_user(username="viewer", password="x", is_staff=True)
    viewer = Client()
    viewer.force_login(staff)
    assert viewer.post(f"/admin/experiments/{experiment.pk}/stop/").status_code == 403
    assert 'id="stop-experiment"' not in viewer.get(f"/admin/experiments/{experiment.pk}/").content.decode()

    superuser = get_user_model().objects.create_superuser(username="boss", password="x")
    checked = Client(enforce_csrf_checks=True)
    checked.force_login(superuser)
    assert checked.post(f"/admin/experiments/{experiment.pk}/stop/").status_code == 403  # no CSRF token
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING


def test_stop_then_promote_from_the_page(admin_client, experiment):
    response = admin_client.post(f"/admin/experiments/{experiment.pk}/stop/", follow=True)
    assert "Experiment stopped." in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.STOPPED

    response = admin_client.post(f"/admin/experiments/{experiment.pk}/promote/", {"variant": "a"}, follow=True)
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.COMPLETED and experiment.winner == "a"
    html = response.content.decode()
    assert 'id="experiment-winner"' in html
    assert "its configuration serves requests naming no scenario" in html and 'id="withdraw-experiment"' in html


def test_withdraw_from_the_page(admin_client, experiment):
    admin_client.post(f"/admin/experiments/{experiment.pk}/promote/", {"variant": "a"})

    response = admin_client.post(f"/admin/experiments/{experiment.pk}/withdraw/", follow=True)

    experiment.refresh_from_db()
    assert experiment.serves_placement is False
    html = response.content.decode()
    assert "back to the defaults" in html and 'id="withdraw-experiment"' not in html


def test_a_refused_action_is_a_message_not_an_error_page(admin_client, experiment):
    admin_client.post(f"/admin/experiments/{experiment.pk}/stop/")
    response = admin_client.post(f"/admin/experiments/{experiment.pk}/stop/", follow=True)
    assert response.status_code == 200
    assert "is stopped, not running" in response.content.decode()
    response = admin_client.get("/admin/experiments/999999/", follow=True)
    assert "xperiment 999999 does not exist" in response.content.decode()


def test_dashboard_shows_ctr_per_model_version_from_the_experiments(admin_client, experiment):
    html = admin_client.get("/admin/dashboard/").content.decode()
    section = html.split('id="version-ctr"')[1].split("</table>")[0]
    assert "v7" in section and "0.1400" in section  # variant b names version 7
    assert "the version active at the time" in section and "0.1100" in section


def test_the_dashboards_ctr_per_version_leaves_out_a_shuffled_baseline(admin_client, experiment):
    # Given a deliberately degraded variant serving no named version (the README's shuffled baseline)
    shuffled = Variant.objects.create(experiment=experiment, name="s", weight=1, config={"strategy": "shuffled"})
    VariantSnapshot.objects.create(
        experiment=experiment, variant=shuffled, computed_at=NOW, users=500, impressions=5_000, clicks=50,
        items_shown=30, coverage=0.5, conversions={}, statistics={"ctr": 0.01},
    )  # fmt: skip

    section = admin_client.get("/admin/dashboard/").content.decode().split('id="version-ctr"')[1].split("</table>")[0]

    # Then the version active at the time keeps its own variant's CTR (the baseline's clicks lowered it)
    assert "the version active at the time" in section and "0.1100" in section
