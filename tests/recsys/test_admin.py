"""The operator admin's data pages: fast lists, item and user pages with what serving answers, the
recommendations preview, the dashboard, and creating API keys that are shown once."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from recsys import admin_selectors, dashboard
from recsys.api_keys import hash_key
from recsys.models import ApiKey, Item, User
from recsys.services import interactions_ingest, items_upsert
from tests.factories import InteractionFactory, ItemFactory
from tests.recsys.admin_setup import catalogue_store, interactions_store, models_trained

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(settings):
    return models_trained(settings)


def result_list(html: str) -> str:
    return html.split('id="result_list"')[1].split("</table>")[0]


def page(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


# ---- lists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["user", "item", "interaction", "eventtype", "apikey"])
def test_changelists_load(admin_client, model):
    InteractionFactory()

    assert admin_client.get(f"/admin/recsys/{model}/").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/admin/recsys/item/?category=sky",
        "/admin/recsys/item/?is_hidden__exact=1",
        "/admin/recsys/item/?updated_at=24h",
        "/admin/recsys/interaction/?event_type=purchase",
        "/admin/recsys/interaction/?created_at=1h",
        "/admin/recsys/user/?created_at=7d",
    ],
)
def test_filtered_lists_load(admin_client, url):
    catalogue_store()
    interactions_store()

    assert admin_client.get(url).status_code == 200


def test_category_filter_keeps_only_that_categorys_items_and_offers_the_common_ones(admin_client):
    catalogue_store()

    html = page(admin_client.get("/admin/recsys/item/?category=sky"))

    assert "sky3" in html and "cooking3" not in html
    assert "?category=cooking" in html  # offered as a choice


def test_type_filter_offers_the_configured_event_types_without_scanning_interactions(admin_client):
    catalogue_store()
    interactions_store()

    with CaptureQueriesContext(connection) as queries:
        html = page(admin_client.get("/admin/recsys/interaction/?event_type=view"))

    assert "?event_type=purchase" in html and "?event_type=dislike" in html
    assert not any("DISTINCT" in q["sql"] and "recsys_interaction" in q["sql"] for q in queries.captured_queries)
    assert "0 interactions" in html  # nothing of type view


def test_an_unfiltered_big_list_shows_the_planner_estimate_and_never_counts_the_table(admin_client, monkeypatch):
    catalogue_store()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE recsys_item")  # reltuples = 16
    items_upsert(rows=[{"id": f"late{n}", "title": "late"} for n in range(4)])  # 20 rows now
    monkeypatch.setattr(admin_selectors, "EXACT_COUNT_BELOW", 10)

    with CaptureQueriesContext(connection) as queries:
        html = page(admin_client.get("/admin/recsys/item/"))

    assert "16 items" in html
    counts = [
        q["sql"] for q in queries.captured_queries if "__count" in q["sql"] or "count(*) FROM (SELECT 1" in q["sql"]
    ]
    assert not counts, counts


def test_a_filtered_big_list_counts_at_most_the_cap(admin_client, monkeypatch):
    catalogue_store()
    monkeypatch.setattr("recsys.admin.EXACT_COUNT_BELOW", 5)

    html = page(admin_client.get("/admin/recsys/item/?category=sky"))  # 8 match

    assert "5 items" in html


def test_small_tables_are_counted_exactly():
    catalogue_store()

    assert admin_selectors.table_row_count(table="recsys_item") == admin_selectors.RowCount(16, exact=True)


def test_item_search_finds_an_exact_id_or_words_of_the_title(admin_client):
    catalogue_store()

    by_id = page(admin_client.get("/admin/recsys/item/?q=sky2"))
    by_words = page(admin_client.get("/admin/recsys/item/?q=telescope"))

    assert ">sky2<" in by_id and ">sky3<" not in by_id
    assert "Telescope and comet" in by_words and "cooking" not in result_list(by_words)


def test_interaction_search_by_user_id_lists_only_that_users_events(admin_client):
    catalogue_store()
    interactions_store()

    html = page(admin_client.get("/admin/recsys/interaction/?q=u7"))

    rows = result_list(html)
    assert rows.count("<tr") == 1 + 6  # header + u7's six purchases
    assert "u7" in rows and "u1<" not in rows and "cooking" not in rows


def test_admin_needs_a_staff_login(client):
    for url in ["/admin/recsys/item/", "/admin/dashboard/", "/admin/preview/", "/admin/embeddings/modelversion/map/"]:
        response = client.get(url)

        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_the_index_links_the_operator_pages(admin_client):
    html = page(admin_client.get("/admin/"))

    for url in ["/admin/dashboard/", "/admin/embeddings/modelversion/", "/admin/embeddings/modelversion/map/"]:
        assert f'href="{url}"' in html
    assert 'href="/admin/preview/"' in html


# ---- item and user pages ----------------------------------------------------------------------


def test_item_page_shows_its_vectors_and_similar_items_in_each_space(admin_client, trained):
    collaborative, built = trained
    item = Item.objects.get(external_id="sky1")

    html = page(admin_client.get(f"/admin/recsys/item/{item.pk}/change/"))

    vectors = html.split('id="item-vectors"')[1].split("</table>")[0]
    assert f"v{collaborative.pk}</a> (ease, active)" in vectors and f"v{built.pk}</a> (fake, active)" in vectors
    similar = html.split('id="similar-items"')[1]
    for space in ["collaborative", "content", "hybrid"]:
        assert f'data-panel="{space}"' in similar
    assert similar.count('<strong class="recsys-strategy">') == 3
    linked = re.findall(r'href="/admin/recsys/item/(\d+)/change/">(\w+)</a>', similar)
    assert linked and all(name.startswith("sky") for _, name in linked[:5])
    assert all(int(pk) == Item.objects.get(external_id=name).pk for pk, name in linked)


def test_item_page_without_any_model_says_so_and_still_loads(admin_client):
    item = ItemFactory(categories=["general"])

    html = page(admin_client.get(f"/admin/recsys/item/{item.pk}/change/"))

    assert "No vector in any active version yet." in html
    assert "popular_in_category" in html


def test_user_page_shows_recent_interactions_and_explained_recommendations(admin_client, trained):
    user = User.objects.get(external_id="u7")

    html = page(admin_client.get(f"/admin/recsys/user/{user.pk}/change/"))

    recent = html.split('id="recent-interactions"')[1].split("</table>")[0]
    assert recent.count("<tr>") == 1 + 6  # header + the six purchases of u7
    panel = html.split('data-panel="recommendations"')[1]
    assert "collaborative" in panel.split("</p>")[0]
    recommended = re.findall(r'<td><a href="/admin/recsys/item/\d+/change/">(\w+)</a>', panel)
    assert recommended and recommended[0].startswith("sky")
    assert "because you interacted with" in panel
    assert re.search(r'href="/admin/recsys/item/\d+/change/">[A-Z]\w+ and \w+</a> <span class="quiet">\(', panel)
    assert 'href="/admin/preview/?user=u7"' in html


def test_preview_answers_for_any_user_id_with_the_strategy(admin_client, trained):
    known = page(admin_client.get("/admin/preview/?user=u1&limit=3&category="))
    unknown = page(admin_client.get("/admin/preview/?user=nobody-yet&limit=3&category="))

    assert "collaborative" in known and "This user's page" in known
    assert len(re.findall(r'<td>\d+</td>\s*<td><a href="/admin/recsys/item/', known)) == 3
    assert '<strong class="recsys-strategy">popular</strong>' in unknown and "Not a stored user" in unknown


def test_preview_with_a_category_keeps_to_it(admin_client, trained):
    html = page(admin_client.get("/admin/preview/?user=u1&limit=5&category=sky"))

    names = re.findall(r'<td><a href="/admin/recsys/item/\d+/change/">(\w+)</a>', html)
    assert names and all(name.startswith("sky") for name in names)


def test_preview_refuses_a_bad_limit_with_a_form_error(admin_client):
    html = page(admin_client.get("/admin/preview/?user=u1&limit=0"))

    assert "errorlist" in html and 'data-panel="recommendations"' not in html


@pytest.mark.parametrize("user", ["%00", "a%00b", "x" * 200])
def test_preview_refuses_an_id_that_cannot_be_one_with_a_form_error(admin_client, user):
    # A NUL in the id answered 500: the invalid id was looked up all the same (the probe of 2026-12-04)
    html = page(admin_client.get(f"/admin/preview/?user={user}&limit=3"))

    assert "errorlist" in html and 'data-panel="recommendations"' not in html


# ---- dashboard --------------------------------------------------------------------------------


def test_dashboard_shows_counts_activity_models_runs_and_services(admin_client, trained):
    collaborative, built = trained
    items_upsert(rows=[{"id": "new-item", "title": "A new telescope", "text": "comet hunting"}])

    html = page(admin_client.get("/admin/dashboard/"))

    assert re.search(r'id="count-items">17<', html) and re.search(r'id="count-users">12<', html)
    assert re.search(r'id="count-interactions">64<', html)
    assert re.search(r'id="awaiting-encoding">1<', html)
    chart = json.loads(html.split('id="activity-data" type="application/json">')[1].split("</script>")[0])
    by_event, by_arrival = chart["series"]
    assert by_event["name"] == "by event time" and by_arrival["name"] == "by arrival time"
    assert len(chart["labels"]) == len(by_event["values"]) == 48 and sum(by_arrival["values"]) == 64
    models = html.split('id="active-models"')[1].split("</table>")[0]
    assert f"v{collaborative.pk}</a> ease" in models and f"v{built.pk}</a> fake" in models
    runs = html.split('id="last-runs"')[1]
    assert runs.count("recsys-status-active") == 2
    ndcg, baseline = collaborative.metrics["ndcg@10"], collaborative.baseline_metrics["ndcg@10"]
    assert f"NDCG@10 {ndcg:.4f} (popularity {baseline:.4f})" in runs and "16 items encoded" in runs
    assert 'id="redis-state">up<' in html
    assert re.search(r"<th scope=\"row\">training</th><td class=\"recsys-number\">\d+</td>", html)


def test_dashboard_shows_redis_down_instead_of_failing_and_quickly(admin_client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    started = time.monotonic()
    html = page(admin_client.get("/admin/dashboard/"))

    assert time.monotonic() - started < 2.0
    assert 'id="redis-state">down<' in html
    assert "unknown (broker down)" in html and "the broker did not answer" in html
    assert "no content model" in html


def test_workers_that_answer_are_listed_with_their_running_tasks(admin_client, monkeypatch):
    replies = {"recsys@host": [{"name": "embeddings.tasks.collaborative_model_train"}], "other@host": []}
    monkeypatch.setattr(dashboard, "workers_state", lambda: dashboard._workers(replies))

    html = page(admin_client.get("/admin/dashboard/"))

    assert 'id="workers-state">2 up<' in html
    assert "recsys@host: running embeddings.tasks.collaborative_model_train" in html and "other@host: idle" in html


def test_a_failed_run_shows_its_error_on_the_dashboard(admin_client):
    from embeddings.models import ModelVersion

    ModelVersion.objects.create(kind="collaborative", algorithm="als", status="failed", error="ValueError: no data")

    runs = page(admin_client.get("/admin/dashboard/")).split('id="last-runs"')[1]

    assert '<td class="recsys-down">ValueError: no data</td>' in runs


def test_no_worker_answering_reads_none_answered():
    assert dashboard.workers_state() is None  # no worker runs beside the unit tests


def test_activity_fills_quiet_hours_with_zeros():
    catalogue_store()
    interactions_store()

    activity = admin_selectors.interactions_activity(hours=48)

    assert len(activity.hours) == len(activity.by_arrival) == len(activity.by_event) == 48
    assert activity.by_arrival[:-1] == [0] * 47 and activity.by_arrival[-1] == 64


def test_an_import_of_older_events_is_charted_when_they_happened_and_when_they_arrived():
    # Given one import, now, of events spread over the last ten hours (and one from last month)
    catalogue_store()
    now = timezone.now()
    rows = [
        {"user": f"u{n}", "item": "sky1", "type": "view", "timestamp": (now - timedelta(hours=n)).isoformat()}
        for n in range(10)
    ]
    rows.append({"user": "u0", "item": "sky2", "type": "view", "timestamp": (now - timedelta(days=30)).isoformat()})
    assert not interactions_ingest(rows=rows).errors

    # When the dashboard charts the last 48 hours
    activity = admin_selectors.interactions_activity(hours=48, now=now)

    # Then event time shows one event in each of the last ten hours, arrival time one spike of all
    assert activity.by_event[-10:] == [1] * 10 and sum(activity.by_event) == 10
    assert activity.by_arrival[-1] == 11 and sum(activity.by_arrival) == 11


def test_activity_counts_events_up_to_a_day_ahead_of_their_arrival():
    catalogue_store()
    now = timezone.now()
    ahead = now + timedelta(hours=20)  # within the clock skew ingestion accepts

    interactions_ingest(rows=[{"user": "u0", "item": "sky1", "type": "view", "timestamp": ahead.isoformat()}])
    activity = admin_selectors.interactions_activity(hours=48, now=ahead)

    assert activity.by_event[-1] == 1 and sum(activity.by_arrival) == 1


# ---- API keys ---------------------------------------------------------------------------------


def test_creating_a_key_in_the_admin_shows_it_once_and_stores_its_hash(admin_client):
    response = admin_client.post(
        "/admin/recsys/apikey/add/", {"name": "shop", "scopes": "read,write", "rate_limit": ""}, follow=True
    )

    shown = [str(m) for m in response.context["messages"]]
    raw_key = shown[0].rsplit(" ", 1)[-1]
    key = ApiKey.objects.get(name="shop")
    assert key.key_hash == hash_key(raw_key)
    assert key.scopes == ["read", "write"]


def test_revoking_keys_in_the_admin_marks_them_revoked(admin_client):
    admin_client.post("/admin/recsys/apikey/add/", {"name": "shop", "scopes": "read", "rate_limit": ""})
    key = ApiKey.objects.get(name="shop")

    admin_client.post("/admin/recsys/apikey/", {"action": "revoke", "_selected_action": [key.pk]})

    key.refresh_from_db()
    assert key.revoked_at is not None


def test_unknown_scopes_are_refused_in_the_admin_form(admin_client):
    response = admin_client.post("/admin/recsys/apikey/add/", {"name": "x", "scopes": "read,root", "rate_limit": ""})

    assert response.status_code == 200
    assert "root" in response.content.decode()
    assert not ApiKey.objects.exists()


# ---- every page: the operator pages in the sidebar, a favicon; times written for people ----------


@pytest.mark.parametrize(
    "url",
    [
        "/admin/recsys/item/",
        "/admin/recsys/interaction/",
        "/admin/recsys/eventtype/view/change/",
        "/admin/auth/user/",
        "/admin/embeddings/modelversion/",
        "/admin/embeddings/modelversion/map/",
        "/admin/dashboard/",
        "/admin/preview/",
    ],
)
def test_every_admin_page_links_the_operator_pages_in_its_sidebar_and_has_a_favicon(admin_client, url):
    html = page(admin_client.get(url))

    sidebar = html.split('id="nav-sidebar"')[1].split("</nav>")[0]
    operations = sidebar.split('id="nav-operations"')[1].split("</table>")[0]
    for link in (
        "/admin/dashboard/",
        "/admin/embeddings/modelversion/",
        "/admin/embeddings/modelversion/map/",
        "/admin/preview/",
    ):
        assert f'href="{link}"' in operations
    assert sidebar.index('id="nav-operations"') < sidebar.index("app-recsys")  # first, above the apps
    assert re.search(r'<link rel="icon" href="/static/recsys/favicon[^"]*\.svg"', html)


def test_the_sidebar_marks_the_operator_page_being_shown(admin_client):
    operations = page(admin_client.get("/admin/embeddings/modelversion/map/")).split('id="nav-operations"')[1]

    assert re.search(r'<tr class="model-map current-model">', operations)
    assert '<tr class="model-models">' in operations


def test_the_index_lists_the_operator_pages_with_what_they_show(admin_client):
    html = page(admin_client.get("/admin/"))

    assert 'id="operations-module"' in html and "queues, workers, health" in html


def test_raw_timestamps_in_messages_are_written_as_a_time_and_how_far_it_is():
    from datetime import datetime

    from recsys.admin_format import timestamps_humanized

    now = datetime(2026, 12, 3, 22, 44, 0, tzinfo=UTC)

    assert timestamps_humanized("training until 2026-12-03 22:48:22.116288+00:00", now=now) == (
        "training until 22:48:22 UTC (in 4 min)"
    )
    assert timestamps_humanized("lease ran out at 2026-11-30T10:00:00Z", now=now) == (
        "lease ran out at 2026-11-30 10:00 UTC (4 days ago)"
    )
    assert timestamps_humanized("no time here", now=now) == "no time here"


def test_interaction_list_writes_moments_compactly(admin_client):
    catalogue_store()
    interactions_store()

    rows = result_list(page(admin_client.get("/admin/recsys/interaction/")))

    assert re.search(r'class="field-happened"><a [^>]+>\d\d:\d\d:\d\d</a>', rows)
    assert re.search(r'<td class="field-received">\d\d:\d\d:\d\d</td>', rows)
    assert re.search(r'<td class="field-item_shown">sky\d · ', rows) or re.search(
        r'field-item_shown">cooking\d · ', rows
    )
    assert "+00:00" not in rows


@pytest.mark.parametrize("reserved", ["popular", "batch", "shoe/similar", "a/../b"])
def test_the_admin_refuses_ids_the_api_could_never_address(admin_client, reserved):
    """The same id rule as the API's (recsys.ids): not only the characters and length."""
    response = admin_client.post("/admin/recsys/user/add/", {"external_id": reserved, "attributes": "{}"})

    assert response.status_code == 200  # the form again, with its error
    assert "not shaped like an endpoint path" in response.content.decode()
    assert not User.objects.filter(external_id=reserved).exists()
    admin_client.post("/admin/recsys/user/add/", {"external_id": "shopper-1", "attributes": "{}"})
    assert User.objects.filter(external_id="shopper-1").exists()


def test_edits_in_the_admin_are_announced_as_the_api_announces_them(rf, admin_user):
    # before: an operator hiding or re-categorising an item, or hiding one for a user, left cached answers
    # and popular rankings serving it for up to 5 minutes, and a new text was never encoded again
    from types import SimpleNamespace

    from django.contrib.admin.sites import site

    from recsys import signals
    from recsys.models import HiddenItem

    sent: list[tuple[str, dict]] = []
    for name in ("items_stored", "user_rules_changed"):
        getattr(signals, name).connect(
            lambda sender, _n=name, **kw: sent.append((_n, kw)), weak=False, dispatch_uid=f"test-admin-{name}"
        )
    try:
        request = rf.post("/admin/")
        request.user = admin_user
        item = ItemFactory(external_id="edited", title="old")
        before = item.content_changed_at
        item.title, item.is_hidden = "new", True
        site._registry[Item].save_model(request, item, SimpleNamespace(changed_data=["title", "is_hidden"]), True)
        user = User.objects.create(external_id="someone")
        hidden = HiddenItem.objects.create(user=user, item=item)
        site._registry[HiddenItem].delete_queryset(request, HiddenItem.objects.filter(pk=hidden.pk))
    finally:
        for name in ("items_stored", "user_rules_changed"):
            getattr(signals, name).disconnect(dispatch_uid=f"test-admin-{name}")

    item.refresh_from_db()
    assert item.content_changed_at and (before is None or item.content_changed_at > before)
    assert sent == [
        ("items_stored", {"created": set(), "changed": {"edited"}, "signal": signals.items_stored}),
        ("user_rules_changed", {"external_id": "someone", "signal": signals.user_rules_changed}),
    ]


def test_deleting_an_item_from_the_admin_never_loads_its_events_to_list_them(admin_client, monkeypatch):
    # Django's confirmation page collects every related row into memory to list it: a popular item's
    # million events and impressions (before: the page never rendered and the delete timed out)
    from django.contrib.admin.utils import NestedObjects

    item = ItemFactory(external_id="popular-one")
    InteractionFactory(item=item)
    monkeypatch.setattr(NestedObjects, "collect", lambda *a, **kw: pytest.fail("collected the related rows"))

    confirm = page(admin_client.get(f"/admin/recsys/item/{item.pk}/delete/"))
    deleted = admin_client.post(f"/admin/recsys/item/{item.pk}/delete/", {"post": "yes"})
    many = admin_client.post(
        "/admin/recsys/user/",
        {"action": "delete_selected", "_selected_action": list(User.objects.values_list("pk", flat=True))},
    )

    assert (
        f"{item}: with its interactions" in confirm
        and deleted.status_code == 302
        and not Item.objects.filter(pk=item.pk).exists()
    )
    assert many.status_code == 200 and "Are you sure" in many.content.decode()


def test_an_item_form_drops_nul_characters_from_attributes_and_refuses_what_postgresql_cannot_hold():
    # before: a \u0000 in an attribute saved from the admin was a 500 (jsonb refuses it)
    from recsys.admin import ItemForm

    item = ItemFactory(external_id="edited")
    data = {"external_id": "edited", "title": "ab", "text": "cd", "categories": "", "is_hidden": False}
    form = ItemForm(data={**data, "attributes": '{"note": "x\\u0000y"}'}, instance=item)
    assert form.is_valid(), form.errors
    form.save()
    item.refresh_from_db()
    assert (item.title, item.text, item.attributes) == ("ab", "cd", {"note": "xy"})
    huge = ItemForm(data={**data, "attributes": json.dumps({"x": "y" * 70_000})}, instance=item)
    assert not huge.is_valid() and "attributes" in huge.errors
