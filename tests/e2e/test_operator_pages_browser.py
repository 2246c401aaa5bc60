"""The operator pages in a real browser: the sidebar of every page, no favicon 404s, maps drawn as
soon as versions are active (named clusters, no click), the activity chart's two series, lists
whose columns fit, read-only version records, and a hostile filter answered without a 500."""

from __future__ import annotations

import re

import pytest

from embeddings.models import ActiveVersion, EmbeddingMap, Kind, ModelVersion
from recsys.models import Item
from tests.e2e.test_admin_browser import log_in, wait_for
from tests.recsys.admin_setup import COOKING, SKY, catalogue_store, interactions_store

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]
# The operator pages of a superuser (the data set export is for superusers only).
OPERATIONS = ["Dashboard", "Models", "Embedding map", "Experiments", "Preview recommendations", "Export data set"]


def train(page, server: str, kind: str) -> int:
    page.goto(f"{server}/admin/embeddings/modelversion/")
    page.click(f"#train-{kind}")
    message = page.inner_text("ul.messagelist")
    version_id = int(re.search(rf"{kind.capitalize()} training started: version (\d+)", message).group(1))
    # The list reloads itself every 5 s while a run trains: a reload landing during the next page's
    # navigation would abort it (net::ERR_ABORTED). A blank page has no timer.
    page.goto("about:blank")
    wait_for(lambda: active_version(kind) == version_id, what=f"v{version_id} active")
    return version_id


def active_version(kind: str) -> int | None:
    return ActiveVersion.objects.filter(kind=kind).values_list("version_id", flat=True).first()


def map_groups(page, server: str, version_id: int) -> tuple[list[str], list[str]]:
    """Open the map of a version without asking for it: its groups, and the names drawn on it."""
    wait_for(lambda: EmbeddingMap.objects.filter(version_id=version_id, state="ready").exists(), what="the map")
    page.goto(f"{server}/admin/embeddings/modelversion/map/?version={version_id}")
    chart = page.wait_for_selector("#embedding-map[data-points]", timeout=30_000)
    assert chart.get_attribute("data-points") == "16"
    return chart.get_attribute("data-groups").split("|"), chart.get_attribute("data-labels").split("|")


def test_operator_pages_in_a_browser(staff_user, server, browser_page):
    page = browser_page
    not_found: list[str] = []
    page.on("response", lambda response: not_found.append(response.url) if response.status == 404 else None)
    catalogue_store()
    interactions_store()
    log_in(page, server, staff_user)

    # Each active version's map is computed on activation, nobody clicks: the content version
    # built for the new items, and a collaborative one trained from the page.
    content = wait_for(lambda: active_version(Kind.CONTENT), what="the content version of the new items")
    collaborative = train(page, server, Kind.COLLABORATIVE)
    groups, _ = map_groups(page, server, collaborative)
    assert set(groups) - {"other", "uncategorised"} == {"cooking", "sky"}
    assert "coloured by first category, t-SNE" in page.inner_text("#map-state")
    names, drawn = map_groups(page, server, content)
    names = [name for name in names if name != "no cluster"]
    assert names and all(set(name.split(", ")) <= set(COOKING + SKY) | {"and"} for name in names)
    assert drawn and set(drawn) <= set(names)  # the compact clusters are named on the map itself

    # The item page names the item's content cluster and links to the map.
    item = Item.objects.get(external_id="sky1")
    page.goto(f"{server}/admin/recsys/item/{item.pk}/change/")
    assert page.inner_text('[data-space="content"] .recsys-cluster') in names

    # A version is a read-only record of its run, in tables, ending at stage "done".
    page.goto(f"{server}/admin/embeddings/modelversion/{collaborative}/change/")
    assert page.locator("input[name=_save]").count() == 0
    assert "stage\tdone" in page.locator(".field-progress_table").inner_text()
    assert ModelVersion.objects.get(pk=collaborative).progress["stage"] == "done"

    # The dashboard charts events by when they happened, and by when they arrived.
    page.goto(f"{server}/admin/dashboard/")
    page.wait_for_selector("#activity-chart canvas")
    series = page.evaluate(
        "() => echarts.getInstanceByDom(document.getElementById('activity-chart')).getOption().series.map(s => s.name)"
    )
    assert series == ["by event time", "by arrival time"]

    # Lists show every column without scrolling sideways.
    for path in ("/admin/embeddings/modelversion/", "/admin/recsys/interaction/"):
        page.goto(server + path)
        overflow = page.evaluate(
            "() => { const r = document.querySelector('.results'); return r.scrollWidth - r.clientWidth; }"
        )
        assert overflow <= 0, (path, overflow)

    # The operator pages are in the sidebar of every page, and the current one is marked.
    for path in (
        "/admin/recsys/item/",
        "/admin/recsys/interaction/",
        "/admin/preview/",
        "/admin/embeddings/modelversion/map/",
    ):
        page.goto(server + path)
        assert page.locator("#nav-operations th a").all_inner_texts() == OPERATIONS
    assert page.inner_text("#nav-operations tr.current-model") == "Embedding map"
    page.click("#nav-operations >> text=Dashboard")
    page.wait_for_url(re.compile(r"/admin/dashboard/$"))

    # A hand-typed filter PostgreSQL refuses: the list again, with a message, never a 500.
    response = page.goto(f"{server}/admin/recsys/item/?categories=jazz")
    assert response.status == 200 and page.url.endswith("?e=1")
    assert "could not be filtered that way" in page.inner_text("ul.messagelist")

    # No page asked for something that is not there (the favicon included).
    assert not not_found, not_found
