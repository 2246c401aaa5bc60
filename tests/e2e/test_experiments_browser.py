"""An operator in a real browser on the Experiments pages: the list in the sidebar, an experiment's
metrics with intervals and its CTR chart (inline SVG under the admin's CSP), then Stop and Promote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from experiments.models import Experiment, ExperimentStatus, Variant, VariantSnapshot
from tests.e2e.test_admin_browser import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def experiment_with_metrics() -> Experiment:
    experiment = Experiment.objects.create(name="homepage colours", control="a", started_at=datetime.now(UTC))
    variants = [
        Variant.objects.create(experiment=experiment, name="a", weight=1),
        Variant.objects.create(experiment=experiment, name="b", weight=1, config={"strategy": "shuffled"}),
    ]
    for step in range(3):
        at = datetime.now(UTC) - timedelta(minutes=3 - step)
        for variant, ctr in zip(variants, (0.10 + step / 100, 0.08), strict=True):
            VariantSnapshot.objects.create(
                experiment=experiment,
                variant=variant,
                computed_at=at,
                users=400,
                impressions=4_000,
                clicks=int(4_000 * ctr),
                items_shown=25,
                statistics={"ctr": ctr, "ctr_interval": [ctr - 0.01, ctr + 0.01], "method": "mSPRT, always valid"},
            )
    return experiment


def test_operator_reads_stops_and_promotes_an_experiment(staff_user, server, browser_page):
    page = browser_page
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if message.type == "error" else None)
    experiment = experiment_with_metrics()
    log_in(page, server, staff_user)

    page.click("#operations-module >> text=Experiments")  # the index lists the operator pages
    page.click(f"a[href='/admin/experiments/{experiment.pk}/'] >> nth=0")
    assert page.inner_text("#experiment-status") == "running"
    assert "0.1200 [0.1100, 0.1300]" in page.inner_text("#variant-a")
    chart = page.locator("#ctr-chart svg")
    assert chart.locator("polyline").count() == 2
    assert chart.bounding_box()["width"] > 300  # drawn, not blocked by the Content-Security-Policy

    page.click("#stop-experiment")
    assert "Experiment stopped." in page.inner_text("ul.messagelist")
    assert page.inner_text("#experiment-status") == "stopped"

    page.select_option("#promote-variant", "b")
    page.click("#promote-experiment")
    assert page.inner_text("#experiment-winner") == "b"
    experiment.refresh_from_db()
    assert (experiment.status, experiment.winner) == (ExperimentStatus.COMPLETED, "b")
    assert not refused, refused
