"""The admin on tables of millions of rows: sorts an index serves, no far pages, reads cut by a
statement timeout with a message, event types deleted only when unused, links that list one user's
or item's interactions, and a capped count of the items awaiting encoding."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from recsys import admin_selectors
from recsys.admin import MAX_PAGES, InteractionAdmin
from recsys.admin_selectors import RowCount
from recsys.models import EventType, Interaction
from recsys.services import items_upsert
from tests.factories import InteractionFactory, ItemFactory, UserFactory
from tests.recsys.admin_setup import catalogue_store, content_build, interactions_store

pytestmark = pytest.mark.django_db
INTERACTIONS = "/admin/recsys/interaction/"


def page(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def column(name: str) -> int:
    """The ``?o=`` index of a column of the interaction list (Django counts the checkbox column)."""
    return 1 + InteractionAdmin.list_display.index(name)


def statement_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        return cursor.fetchone()[0]


# ---- sorting ----------------------------------------------------------------------------------


def test_the_interaction_list_offers_only_the_sort_an_index_serves(admin_client):
    InteractionFactory()

    html = page(admin_client.get(INTERACTIONS))

    sortable = re.findall(r'class="sortable[^"]*column-([a-z_]+)', html)
    assert sortable == ["received"]  # by id: every partition's primary key reads it in order


@pytest.mark.parametrize("name", ["value", "weight", "event_type", "happened", "user"])
def test_a_hand_typed_sort_on_another_column_is_ignored(admin_client, name):
    InteractionFactory()

    with CaptureQueriesContext(connection) as queries:
        page(admin_client.get(INTERACTIONS, {"o": str(column(name))}))

    read = [q["sql"] for q in queries.captured_queries if 'INNER JOIN "recsys_user"' in q["sql"]]
    assert read == [read[0]] and read[0].endswith('ORDER BY "recsys_interaction"."id" DESC'), read  # newest ids


def test_received_sorts_by_id_both_ways(admin_client):
    first, second = InteractionFactory(), InteractionFactory()

    with CaptureQueriesContext(connection) as queries:
        html = page(admin_client.get(INTERACTIONS, {"o": str(column("received"))}))

    assert any('ORDER BY "recsys_interaction"."id" ASC' in q["sql"] for q in queries.captured_queries)
    assert html.index(f"/{first.pk}/change/") < html.index(f"/{second.pk}/change/")


def test_one_users_events_sort_by_event_time_through_their_index(admin_client):
    catalogue_store()
    interactions_store()
    user_pk = Interaction.objects.values_list("user_id", flat=True).first()

    with CaptureQueriesContext(connection) as queries:
        html = page(admin_client.get(INTERACTIONS, {"user": user_pk}))

    assert set(re.findall(r'class="sortable[^"]*column-([a-z_]+)', html)) == {"happened", "received"}
    read = [q["sql"] for q in queries.captured_queries if 'INNER JOIN "recsys_user"' in q["sql"]]
    assert read == [read[0]] and read[0].endswith(
        'ORDER BY "recsys_interaction"."timestamp" DESC, "recsys_interaction"."id" DESC'
    )
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]
    assert counts and not any("ORDER BY" in count for count in counts)  # any matches will do for a count


# ---- far pages --------------------------------------------------------------------------------


@pytest.fixture
def hundred_million(monkeypatch):
    """The planner estimates 100M interactions (2M pages of 50)."""
    InteractionFactory()
    monkeypatch.setattr("recsys.admin.table_row_count", lambda table: RowCount(100_000_000, exact=False))


def test_no_link_leads_past_the_reachable_pages(admin_client, hundred_million):
    html = page(admin_client.get(INTERACTIONS))

    pages = [int(n) for n in re.findall(r"\?p=(\d+)", html)]
    assert pages and max(pages) == MAX_PAGES


def test_a_far_page_is_refused_without_reading_up_to_it(admin_client, hundred_million):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(INTERACTIONS, {"p": "1999999"})

    assert response.status_code == 302 and response["Location"].endswith("?e=1")
    assert not [q["sql"] for q in queries.captured_queries if "OFFSET" in q["sql"]]
    assert f"Only the first {MAX_PAGES} pages" in page(admin_client.get(response["Location"]))


# ---- statement timeout ------------------------------------------------------------------------


def test_list_reads_run_under_the_admin_statement_timeout_and_give_the_connection_its_own_back(admin_client, settings):
    settings.RECSYS_ADMIN_STATEMENT_TIMEOUT_MS = 4321
    InteractionFactory()
    before = statement_timeout()

    with CaptureQueriesContext(connection) as queries:
        page(admin_client.get(INTERACTIONS, {"event_type": "view"}))

    assert any("set_config('statement_timeout'" in q["sql"] and "4321ms" in q["sql"] for q in queries.captured_queries)
    assert statement_timeout() == before  # persistent connections: no bound left behind


def test_a_list_read_past_the_timeout_is_cut_with_a_message_not_a_500(admin_client, settings, monkeypatch):
    settings.RECSYS_ADMIN_STATEMENT_TIMEOUT_MS = 100
    InteractionFactory()
    before = statement_timeout()
    plain = InteractionAdmin.get_queryset
    # A filter that takes half a second a row: as a sort or a filter that no index serves on 100M rows.
    slow = lambda self, request: plain(self, request).extra(where=["pg_sleep(0.5) IS NOT NULL"])  # noqa: E731
    monkeypatch.setattr(InteractionAdmin, "get_queryset", slow)

    response = admin_client.get(INTERACTIONS, {"event_type": "view"})
    monkeypatch.setattr(InteractionAdmin, "get_queryset", plain)

    assert response.status_code == 302 and response["Location"].endswith("?e=1")
    assert "Reading the list was cut after 0.1 s" in page(admin_client.get(response["Location"]))
    assert statement_timeout() == before


# ---- deleting event types ---------------------------------------------------------------------


@pytest.fixture
def used_and_unused(db):
    """ "aaa-unused" (deleted first in name order) and "purchase", which an interaction has."""
    InteractionFactory(event_type="purchase")
    EventType.objects.create(name="aaa-unused", weight=1.0)


def test_deleting_a_type_in_use_names_its_interactions_and_deletes_nothing(admin_client, used_and_unused):
    url = "/admin/recsys/eventtype/purchase/delete/"

    confirm = page(admin_client.get(url))
    posted = page(admin_client.post(url, {"post": "yes"}))

    assert "Cannot delete" in confirm and "interactions of type purchase" in confirm
    assert "Cannot delete" in posted and EventType.objects.filter(name="purchase").exists()


def test_a_bulk_delete_with_one_type_in_use_deletes_none_of_them(admin_client, used_and_unused):
    chosen = {"action": "delete_selected", "_selected_action": ["aaa-unused", "purchase"], "post": "yes"}

    html = page(admin_client.post("/admin/recsys/eventtype/", chosen))

    assert "Cannot delete" in html and "interactions of type purchase" in html
    assert EventType.objects.filter(name__in=["aaa-unused", "purchase"]).count() == 2


def test_a_type_put_to_use_after_the_check_still_deletes_nothing_and_says_why(
    admin_client, used_and_unused, monkeypatch
):
    # The confirmation's check saw no interactions; one arrived before the delete (EventType.delete sees it).
    monkeypatch.setattr("recsys.admin.event_types_in_use", lambda names: [])
    chosen = {"action": "delete_selected", "_selected_action": ["aaa-unused", "purchase"], "post": "yes"}

    response = admin_client.post("/admin/recsys/eventtype/", chosen, follow=True)

    assert "Nothing was deleted: interactions of type &#x27;purchase&#x27; exist" in page(response)
    assert EventType.objects.filter(name__in=["aaa-unused", "purchase"]).count() == 2


def test_an_unused_type_is_deleted(admin_client, used_and_unused):
    chosen = {"action": "delete_selected", "_selected_action": ["aaa-unused"], "post": "yes"}

    response = admin_client.post("/admin/recsys/eventtype/", chosen)

    assert response.status_code == 302 and not EventType.objects.filter(name="aaa-unused").exists()


def test_a_check_cut_by_the_timeout_deletes_nothing(admin_client, used_and_unused, settings, monkeypatch):
    settings.RECSYS_ADMIN_STATEMENT_TIMEOUT_MS = 100

    def slow(names):  # an unused type's check on a big table reads every interaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)")

    monkeypatch.setattr("recsys.admin.event_types_in_use", slow)
    url = "/admin/recsys/eventtype/aaa-unused/delete/"

    html = page(admin_client.post(url, {"post": "yes"}))

    assert "Cannot delete" in html and "the check was cut after 0.1 s" in html
    assert EventType.objects.filter(name="aaa-unused").exists()


# ---- links from a user's and an item's pages --------------------------------------------------


@pytest.fixture
def shared_id(db):
    """User "42" and item "42" (MovieLens numbers both from 1): each in one interaction."""
    user, item = UserFactory(external_id="42"), ItemFactory(external_id="42")
    InteractionFactory(user=user, item=ItemFactory(external_id="other-item"))
    InteractionFactory(user=UserFactory(external_id="other-user"), item=item)
    return user, item


def listed(admin_client, change_page: str, link_text: str) -> str:
    html = page(admin_client.get(change_page))
    href = re.search(rf'<a href="([^"]+)">{link_text}</a>', html).group(1).replace("&amp;", "&")
    rows = page(admin_client.get(href)).split('id="result_list"')[1].split("</table>")[0]
    return rows


def test_the_user_page_links_only_that_users_interactions(admin_client, shared_id):
    user, _ = shared_id

    rows = listed(admin_client, f"/admin/recsys/user/{user.pk}/change/", "All of this user's interactions")

    assert rows.count("<tr") == 1 + 1 and "other-item" in rows and "other-user" not in rows


def test_the_item_page_links_only_that_items_interactions(admin_client, shared_id):
    _, item = shared_id

    rows = listed(admin_client, f"/admin/recsys/item/{item.pk}/change/", "All of this item's interactions")

    assert rows.count("<tr") == 1 + 1 and "other-user" in rows and "other-item" not in rows


# ---- items awaiting encoding ------------------------------------------------------------------


def test_items_awaiting_encoding_are_counted_up_to_a_cap(settings):
    settings.RECSYS_CONTENT_ENCODER = "fake"
    catalogue_store()
    content_build()
    items_upsert(rows=[{"id": f"new{n}", "title": f"new telescope {n}"} for n in range(3)])

    with CaptureQueriesContext(connection) as queries:
        capped = admin_selectors.awaiting_encoding_count(cap=2)

    assert capped == RowCount(2, exact=False)
    assert admin_selectors.awaiting_encoding_count(cap=3) == RowCount(3, exact=True)
    assert any("LIMIT 3" in q["sql"] for q in queries.captured_queries)  # never a count of them all


def test_no_content_model_means_nothing_is_awaited():
    assert admin_selectors.awaiting_encoding_count() is None


def test_the_dashboard_shows_a_capped_count_with_a_plus(admin_client, monkeypatch):
    monkeypatch.setattr("recsys.dashboard.awaiting_encoding_count", lambda: RowCount(10_000, exact=False))

    html = page(admin_client.get("/admin/dashboard/"))

    assert re.search(r'id="awaiting-encoding">10,000\+<', html)
