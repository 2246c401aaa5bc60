"""An operator in a real browser: logs in, starts a training run that the real worker finishes,
sees an item's similar items and the models page, draws the embedding map and clicks a point."""

from __future__ import annotations

import re
import time

import pytest

from embeddings.models import EmbeddingMap, Kind, ModelVersion, Status
from recsys.models import Item
from tests.recsys.admin_setup import catalogue_store, interactions_store, models_trained

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def wait_for(condition, seconds: float = 45, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def log_in(page, base: str, staff: dict[str, str]) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", staff["username"])
    page.fill("#id_password", staff["password"])
    page.click("input[type=submit]")
    page.wait_for_selector("#operations-module")


def test_operator_trains_a_model_and_sees_similar_items_models_and_the_map(staff_user, server, browser_page):
    page = browser_page
    catalogue_store()
    interactions_store()
    log_in(page, server, staff_user)

    # Train now: the real worker trains and activates the version while the page refreshes.
    page.goto(f"{server}/admin/embeddings/modelversion/")
    page.click("#train-collaborative")
    message = page.inner_text("ul.messagelist")
    version_id = int(re.search(r"Collaborative training started: version (\d+)", message).group(1))
    page.goto("about:blank")  # the list reloads itself while training: a reload could abort the next goto
    wait_for(
        lambda: ModelVersion.objects.get(pk=version_id).status == Status.ACTIVE, what=f"version {version_id} active"
    )
    page.goto(f"{server}/admin/embeddings/modelversion/")
    link = page.locator(f'#result_list a[href$="/modelversion/{version_id}/change/"]')
    assert "\tActive\t" in link.locator("xpath=ancestor::tr").inner_text()
    page.wait_for_selector("#ndcg-chart canvas")

    # The item page lists similar items per space, with links to their pages.
    item = Item.objects.get(external_id="sky1")
    page.goto(f"{server}/admin/recsys/item/{item.pk}/change/")
    collaborative = page.locator('[data-panel="collaborative"]')
    assert collaborative.locator(".recsys-strategy").inner_text() == "collaborative"
    names = collaborative.locator("tbody tr td:nth-child(2) a").all_inner_texts()
    assert len(names) == 10 and "sky1" not in names
    collaborative.locator("tbody tr td:nth-child(2) a").first.click()
    page.wait_for_url(re.compile(r"/admin/recsys/item/\d+/change/$"))
    assert page.locator("#id_title").input_value()

    # The map: computed by the worker, drawn with a point per item; a click opens that item.
    page.goto(f"{server}/admin/embeddings/modelversion/map/?version={version_id}")
    page.click("#compute-map")
    wait_for(lambda: EmbeddingMap.objects.filter(version_id=version_id, state="ready").exists(), what="the map")
    chart = page.wait_for_selector("#embedding-map[data-points]", timeout=20_000)
    assert chart.get_attribute("data-points") == "16"
    assert page.locator("#embedding-map canvas").count() >= 1
    x, y = page.evaluate(
        """() => {
            const option = window.recsysMap.getOption();
            const point = option.series[0].data[0];
            return window.recsysMap.convertToPixel({seriesIndex: 0}, [point[0], point[1]]);
        }"""
    )
    box = chart.bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_url(re.compile(r"/admin/recsys/item/\d+/change/$"))

    # The dashboard sees the worker and the active model.
    page.goto(f"{server}/admin/dashboard/")
    assert re.match(r"\d+ up", page.inner_text("#workers-state"))
    assert page.inner_text("#redis-state") == "up"
    assert f"v{version_id}" in page.inner_text("#active-models")
    assert ModelVersion.objects.filter(kind=Kind.COLLABORATIVE, status=Status.ACTIVE).count() == 1


def test_admin_pages_work_under_their_content_security_policy(staff_user, server, browser_page, settings):
    page = browser_page
    collaborative, built = models_trained(settings)
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    log_in(page, server, staff_user)

    page.goto(f"{server}/admin/dashboard/")
    page.wait_for_selector("[data-chart] canvas", timeout=20_000)  # ECharts drew under the policy
    page.goto(f"{server}/admin/embeddings/modelversion/")
    page.goto(f"{server}/admin/embeddings/modelversion/map/?version={collaborative.pk}")
    with page.expect_navigation():
        page.select_option("#map-version", str(built.pk))  # the select submits itself (no inline handler)

    assert f"version={built.pk}" in page.url
    assert refused == []
