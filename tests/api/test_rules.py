"""Business rules over the API: filters, boosts, scenarios, pins, buries, hidden items, availability.

Users u0..u19 like items i0..i14 and users u20..u39 like items i15..i29 (see conftest); item iN
costs N and is in stock when N is even.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from embeddings import services
from embeddings.learners import LearnerParams
from embeddings.popularity import popularity_refresh
from embeddings.recommendations import user_recommendations_list
from embeddings.serving import active
from embeddings.spaces import item_vector_put
from embeddings.vectors import search
from embeddings.vectors.rows import vectors_of
from recsys.models import HiddenItem, Interaction, Item, User
from recsys.rules.scenarios import scenario_put
from recsys.services import items_upsert, user_delete

pytestmark = pytest.mark.django_db


def item_rows(n: int = 30) -> list[dict]:
    return [
        {
            "id": f"i{k}",
            "title": f"Item {k} lamp",
            "categories": ["first" if k < 15 else "second"],
            "attributes": {"price": k, "in_stock": k % 2 == 0},
        }
        for k in range(n)
    ]


@pytest.fixture
def trained(communities, settings):
    settings.RECSYS_CF_TUNE = False
    items_upsert(rows=item_rows())
    params = LearnerParams(algorithm="als", factors=8, iterations=10, regularization=0.05)
    version = services.collaborative_version_create(params=params)
    popularity_refresh()
    return services.collaborative_model_train(version_id=version.pk)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["items"]]


def price(item_id: str) -> int:
    return int(item_id.removeprefix("i"))


ENDPOINTS = {
    "personalised": lambda c, q: c.get(f"/api/v1/users/u3/recommendations?{q}"),
    "similar": lambda c, q: c.get(f"/api/v1/items/i0/similar?user=u3&{q}"),
    "popular": lambda c, q: c.get(f"/api/v1/items/popular?user=u3&{q}"),
    "search": lambda c, q: c.get(f"/api/v1/search?q=lamp&mode=keyword&user=u3&{q}"),
    "session": lambda c, q: c.post("/api/v1/recommendations", session_body(q), format="json"),
    # API.md: "filter= and boost= ... on every recommendation endpoint": the POST takes them as query parameters too
    "session, rules in the query": lambda c, q: c.post(
        f"/api/v1/recommendations?user=u3&{'&'.join(p for p in q.split('&') if not p.startswith('limit='))}",
        {k: v for k, v in session_body(q).items() if k in ("items", "limit")},
        format="json",
    ),
}


def session_body(query: str) -> dict:
    body: dict = {"items": ["i1"], "user": "u3"}
    for name, value in (p.split("=", 1) for p in query.split("&") if p):
        body[name] = int(value) if name == "limit" else [value] if name == "boost" else value
    return body


# ---- filters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_a_filter_holds_on_every_endpoint(reader, trained, endpoint):
    found = ids(ENDPOINTS[endpoint](reader, "limit=6&filter=attributes.in_stock = true AND attributes.price < 20"))

    assert found and all(price(i) % 2 == 0 and price(i) < 20 for i in found)


def test_a_selective_filter_still_fills_the_limit(reader, trained):
    found = ids(reader.get("/api/v1/items/i0/similar?limit=5&filter=attributes.price >= 25"))

    assert sorted(found) == ["i25", "i26", "i27", "i28", "i29"]


@pytest.fixture(params=["server", "over_fetch"])
def vector_path(request, monkeypatch):
    """The server's own path (iterative scans on pgvector ≥ 0.8) and the over-fetch one of 0.6."""
    if request.param == "over_fetch":
        monkeypatch.setattr(search, "iterative_scans_available", lambda: False)
    return request.param


def test_a_selective_filter_fills_the_limit_past_the_index_candidates(reader, db, vector_path):
    # 400 items in a custom space, more than hnsw.ef_search's first 100 candidates; the 6 that match
    # the filter point away from the query, so an unfiltered index scan would never reach them.
    rng = np.random.default_rng(7)
    items_upsert(rows=[{"id": f"v{k}", "attributes": {"rare": k >= 394}} for k in range(400)])
    for k in range(400):
        direction = np.ones(8) if k < 394 else -np.ones(8)
        item_vector_put(item_external_id=f"v{k}", space="shop", vector=(direction + rng.normal(0, 0.3, 8)).tolist())

    found = ids(reader.get("/api/v1/items/v0/similar?space=shop&limit=6&filter=attributes.rare = true"))

    assert sorted(found) == sorted(f"v{k}" for k in range(394, 400))


@pytest.mark.parametrize(
    ("query", "position"),
    [("filter=attributes.price <", 18), ("filter=price < 5", 0), ('boost=id = "i1"', None), ("boost=id = 5:2", 3)],
)
def test_a_bad_expression_is_a_400_naming_its_position(reader, trained, query, position):
    response = reader.get(f"/api/v1/items/popular?{query}")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"].get("position") == position


# ---- boosts, scenarios, pins, buries ---------------------------------------------------------------


def test_a_boost_lifts_matching_items_above_the_rest(reader, trained):
    plain = ids(reader.get("/api/v1/users/u3/recommendations?limit=5"))
    target = plain[-1]

    boosted = ids(reader.get(f'/api/v1/users/u3/recommendations?limit=5&boost=id = "{target}":100'))

    assert boosted[0] == target
    assert boosted[1:] == [i for i in plain if i != target]


def test_a_boost_can_bring_in_an_item_from_beyond_the_limit(reader, trained):
    wide = ids(reader.get("/api/v1/users/u3/recommendations?limit=20"))
    target = wide[12]  # boosts re-sort the best 3 × limit candidates

    boosted = ids(reader.get(f'/api/v1/users/u3/recommendations?limit=5&boost=id = "{target}":100'))

    assert boosted[0] == target


def test_scenarios_are_saved_read_listed_and_deleted_by_admins(admin_client_api, reader):
    body = {
        "filter": "attributes.in_stock = true",
        "boost": [{"expression": 'categories CONTAINS "second"', "factor": 2}],
    }

    created = admin_client_api.put("/api/v1/scenarios/homepage", body, format="json")
    replaced = admin_client_api.put(
        "/api/v1/scenarios/homepage", {**body, "pins": [{"item": "i1", "position": 2}]}, format="json"
    )

    assert (created.status_code, replaced.status_code) == (201, 200)
    got = admin_client_api.get("/api/v1/scenarios/homepage").json()
    assert got["filter"] == body["filter"] and got["pins"] == [{"item": "i1", "position": 2}]
    assert got["boost"] == [{"expression": 'categories CONTAINS "second"', "factor": 2.0}]
    assert [s["name"] for s in admin_client_api.get("/api/v1/scenarios").json()["scenarios"]] == ["homepage"]
    assert reader.put("/api/v1/scenarios/other", body, format="json").status_code == 403
    assert admin_client_api.delete("/api/v1/scenarios/homepage").status_code == 204
    assert admin_client_api.get("/api/v1/scenarios/homepage").status_code == 404


def test_a_scenario_with_a_bad_expression_is_refused_at_save_with_its_position(admin_client_api):
    response = admin_client_api.put(
        "/api/v1/scenarios/sale", {"boost": [{"expression": "attributes.price <> 5", "factor": 2}]}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"]["position"] == 18
    assert admin_client_api.get("/api/v1/scenarios/sale").status_code == 404


@pytest.mark.parametrize("body", [{"buries": {}}, {"pins": {}}, {"boost": False}, {"filter": 0}, {"buries": None}])
def test_a_scenario_field_of_the_wrong_type_is_refused_even_when_empty(admin_client_api, body):
    response = admin_client_api.put("/api/v1/scenarios/typed", body, format="json")

    assert response.status_code == 400, response.content
    assert admin_client_api.get("/api/v1/scenarios/typed").status_code == 404


def test_a_scenario_applies_by_name_with_the_requests_own_rules(reader, trained):
    scenario_put(name="cheap", body={"filter": "attributes.price < 20"})

    both = ids(reader.get("/api/v1/items/popular?limit=30&scenario=cheap&filter=attributes.in_stock = true"))
    unknown = ids(reader.get("/api/v1/items/popular?limit=30&scenario=nothing-saved"))

    assert both and all(price(i) < 20 and price(i) % 2 == 0 for i in both)
    assert len(unknown) == 30  # a scenario without saved rules applies none


def test_a_scenario_save_is_seen_by_the_next_request(reader, trained, settings):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 300
    scenario_put(name="front", body={"filter": 'categories CONTAINS "first"'})
    before = ids(reader.get("/api/v1/users/u25/recommendations?limit=5&scenario=front"))

    scenario_put(name="front", body={"filter": 'categories CONTAINS "second"'})
    after = ids(reader.get("/api/v1/users/u25/recommendations?limit=5&scenario=front"))

    assert all(price(i) < 15 for i in before) and all(price(i) >= 15 for i in after)


def test_pins_take_their_positions_when_the_item_passes_the_rules(reader, trained):
    Item.objects.filter(external_id="i3").update(is_hidden=True)
    scenario_put(
        name="pinned",
        body={"pins": [{"item": "i29", "position": 1}, {"item": "i28", "position": 3}, {"item": "i3", "position": 2}]},
    )

    found = ids(reader.get("/api/v1/users/u3/recommendations?limit=5&scenario=pinned"))
    filtered = ids(reader.get("/api/v1/users/u3/recommendations?limit=5&scenario=pinned&filter=attributes.price < 29"))

    assert found[0] == "i29" and found[2] == "i28" and len(found) == 5
    assert "i3" not in found  # hidden in the catalogue: a pin never shows it
    assert "i29" not in filtered and filtered[2] == "i28"


def test_a_pin_never_shows_a_user_an_item_they_have_seen_unless_asked(reader, trained):
    # API.md: personalised answers never hold an item the user has seen (before: a pin did)
    from recsys.models import Interaction

    seen = Interaction.objects.filter(user__external_id="u3").values_list("item__external_id", flat=True).first()
    scenario_put(name="seen-pin", body={"pins": [{"item": seen, "position": 1}]})

    found = ids(reader.get("/api/v1/users/u3/recommendations?limit=5&scenario=seen-pin"))
    asked = ids(reader.get("/api/v1/users/u3/recommendations?limit=5&scenario=seen-pin&include_seen=true"))
    other = ids(reader.get("/api/v1/users/u25/recommendations?limit=5&scenario=seen-pin"))

    assert seen not in found and asked[0] == seen
    assert other[0] == seen or Interaction.objects.filter(user__external_id="u25", item__external_id=seen).exists()


def test_buried_items_come_after_every_other_candidate(reader, trained):
    plain = ids(reader.get("/api/v1/users/u3/recommendations?limit=5"))
    scenario_put(name="buried", body={"buries": [plain[0]]})

    found = ids(reader.get("/api/v1/users/u3/recommendations?limit=5&scenario=buried"))

    assert plain[0] not in found and found == plain[1:] + found[4:]


def test_experiments_may_switch_a_scenarios_rules_off(trained):
    scenario_put(name="cheap", body={"filter": "attributes.price < 3"})

    on = user_recommendations_list(user_external_id="u25", limit=5, scenario="cheap")
    off = user_recommendations_list(user_external_id="u25", limit=5, scenario="cheap", apply_scenario_rules=False)

    assert all(price(i.id) < 3 for i in on.items)
    assert any(price(i.id) >= 3 for i in off.items)


def test_a_personalised_request_with_a_scenario_stays_within_its_queries(
    reader, trained, settings, django_assert_max_num_queries, monkeypatch
):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    seen = set(Interaction.objects.filter(user__external_id="u3").values_list("item__external_id", flat=True))
    pin = next(f"i{k}" for k in range(0, 30, 2) if f"i{k}" not in seen)  # in stock, and u3 has not seen it
    scenario_put(
        name="home",
        body={
            "filter": "attributes.in_stock = true",
            "boost": [{"expression": "attributes.price > 20", "factor": 2}],
            "pins": [{"item": pin, "position": 1}],
        },
    )
    ids(reader.get("/api/v1/users/u3/recommendations?scenario=home"))  # the scenario is cached per process
    statements: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(cursor, query, *args, **kwargs):
        text = query.as_string(cursor.connection) if hasattr(query, "as_string") else str(query)
        if not text.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "SELECT SET_CONFIG")):
            statements.append(text)
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)

    # Django sees the API key's lookup and the test transaction's savepoints; the search and the
    # rules' check of the pins run on the raw connection as prepared statements.
    with django_assert_max_num_queries(5):
        # limit 3: the 9 candidates boosts re-sort exist (on pgvector < 0.8 fewer would mean an exact scan)
        found = ids(
            reader.get('/api/v1/users/u3/recommendations?limit=3&scenario=home&boost=categories CONTAINS "first":3')
        )

    # The one-statement search (filters, boost matches and hidden items inside) and the pins' check
    # (the API key was read by the request before: each web process caches it for a few seconds).
    assert len(statements) == 2, "\n\n".join(s[:150] for s in statements)
    assert found[0] == pin


# ---- hidden items -------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_hidden_items_never_appear_on_any_endpoint_that_knows_the_user(
    writer, trained, endpoint, settings, django_capture_on_commit_callbacks
):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 300
    shown = ids(ENDPOINTS[endpoint](writer, "limit=5"))

    with django_capture_on_commit_callbacks(execute=True):  # the user's cached answers go stale
        hidden = writer.post("/api/v1/users/u3/hidden", {"items": [*shown[:3], "no-such-item"]}, format="json")
    after = ids(ENDPOINTS[endpoint](writer, "limit=5"))

    assert hidden.status_code == 200 and hidden.json() == {"changed": 3, "unknown_items": ["no-such-item"]}
    assert not set(after) & set(shown[:3]) and len(after) == 5
    with django_capture_on_commit_callbacks(execute=True):
        shown_again = writer.delete("/api/v1/users/u3/hidden", {"items": shown[:3]}, format="json")
    assert shown_again.json()["changed"] == 3
    assert ids(ENDPOINTS[endpoint](writer, "limit=5")) == shown


def test_hiding_needs_write_and_a_known_user_and_deleting_the_user_cascades(reader, writer, trained):
    assert reader.post("/api/v1/users/u3/hidden", {"items": ["i1"]}, format="json").status_code == 403
    assert writer.post("/api/v1/users/ghost/hidden", {"items": ["i1"]}, format="json").status_code == 404
    assert writer.post("/api/v1/users/u3/hidden", {"items": []}, format="json").status_code == 400
    writer.post("/api/v1/users/u3/hidden", {"items": ["i1", "i2"]}, format="json")
    assert writer.get("/api/v1/users/u3/hidden").json()["items"] == ["i2", "i1"] or set(
        writer.get("/api/v1/users/u3/hidden").json()["items"]
    ) == {"i1", "i2"}

    user_delete(external_id="u3")

    assert not HiddenItem.objects.exists()


# ---- availability windows ------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_items_outside_their_window_are_never_recommended(
    writer, trained, endpoint, django_capture_on_commit_callbacks
):
    shown = ids(ENDPOINTS[endpoint](writer, "limit=6"))
    now = datetime.now(UTC)
    with django_capture_on_commit_callbacks(execute=True):  # a catalogue change: cached answers go stale
        writer.put(f"/api/v1/items/{shown[0]}", {"available_until": iso(now - timedelta(hours=1))}, format="json")
        writer.put(f"/api/v1/items/{shown[1]}", {"available_from": iso(now + timedelta(hours=1))}, format="json")
        writer.put(
            f"/api/v1/items/{shown[2]}",
            {"available_from": iso(now - timedelta(hours=1)), "available_until": iso(now + timedelta(hours=1))},
            format="json",
        )

    after = ids(ENDPOINTS[endpoint](writer, "limit=6"))

    assert shown[0] not in after and shown[1] not in after and shown[2] in after


def test_a_cached_answer_is_not_served_past_an_items_window(
    reader, writer, trained, settings, django_capture_on_commit_callbacks, monkeypatch
):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 300
    shown = ids(reader.get("/api/v1/users/u3/recommendations?limit=5"))
    closes = datetime.now(UTC) + timedelta(minutes=10)
    with django_capture_on_commit_callbacks(execute=True):
        writer.put(f"/api/v1/items/{shown[0]}", {"available_until": iso(closes)}, format="json")
    assert shown[0] in ids(reader.get("/api/v1/users/u3/recommendations?limit=5"))  # cached again, window open
    # The window closes (in the database without a write that would make answers stale, and on the clock).
    Item.objects.filter(external_id=shown[0]).update(available_until=datetime.now(UTC) - timedelta(seconds=1))
    assert shown[0] in ids(reader.get("/api/v1/users/u3/recommendations?limit=5"))  # the cache still holds it

    later = closes.timestamp() + 1
    monkeypatch.setattr("embeddings.serving.time.time", lambda: later)

    assert shown[0] not in ids(reader.get("/api/v1/users/u3/recommendations?limit=5"))


def test_a_window_that_ends_before_it_starts_is_refused(writer, db):
    response = writer.put(
        "/api/v1/items/x",
        {"available_from": "2026-02-01T00:00:00Z", "available_until": "2026-01-01T00:00:00Z"},
        format="json",
    )

    assert response.status_code == 400
    assert "available_until" in response.json()["error"]["details"]


def test_an_update_of_one_end_that_empties_the_stored_window_is_refused_and_the_batch_keeps_its_other_rows(writer, db):
    # One end per request, the second ending the window before it starts: it was stored, and a backup
    # of it could not be restored (the probe of 2026-12-04)
    assert writer.put("/api/v1/items/w1", {"available_from": "2026-06-01T00:00:00Z"}, format="json").status_code == 201
    response = writer.put("/api/v1/items/w1", {"available_until": "2026-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 400
    assert "available_until" in response.json()["error"]["details"]

    batch = writer.post(
        "/api/v1/items/batch",
        {
            "items": [
                {"id": "w1", "available_until": "2026-05-01T00:00:00Z"},
                {"id": "w2", "title": "fine"},
                {"id": "w1", "available_until": "2026-07-01T00:00:00Z", "title": "later row"},
                {"id": "w3", "available_until": "2026-01-01T00:00:00Z"},
            ]
        },
        format="json",
    ).json()
    # the repeated id's rows merge (the later end wins): that window is valid; w3 has no start
    assert batch["errors"] == [] and batch["created"] == 2
    refused = writer.post(
        "/api/v1/items/batch",
        {"items": [{"id": "w2", "title": "kept"}, {"id": "w1", "available_until": "2026-06-01T00:00:00Z"}]},
        format="json",
    ).json()
    assert [e["index"] for e in refused["errors"]] == [1] and refused["updated"] == 1
    item = writer.get("/api/v1/items/w1").json()
    assert (item["available_until"], item["title"]) == ("2026-07-01T00:00:00Z", "later row")
    assert writer.get("/api/v1/items/w2").json()["title"] == "kept"
    # Each end in a row of its own, for a new item: the rows merge, and the empty window is refused
    split = writer.post(
        "/api/v1/items/batch",
        {
            "items": [
                {"id": "w4", "available_from": "2026-06-01T00:00:00Z"},
                {"id": "w4", "available_until": "2026-05-01T00:00:00Z"},
            ]
        },
        format="json",
    ).json()
    assert [e["index"] for e in split["errors"]] == [1] and writer.get("/api/v1/items/w4").status_code == 404


# ---- boosted answers against a straightforward reference ---------------------------------------------


def reference_answer(user: str, *, limit: int, keep, boosts) -> list[str]:
    """Exact inner products with the stored vectors, the user's seen items and what ``keep`` refuses
    skipped, the best 3 × limit boosted (positive scores multiplied) and re-sorted, cut to ``limit``."""
    version = active()
    items = {i.pk: i for i in Item.objects.all()}
    user_pk = User.objects.get(external_id=user).pk
    query = vectors_of(version.user_table, "user_id", [user_pk])[user_pk]
    seen = set(Interaction.objects.filter(user_id=user_pk).values_list("item_id", flat=True))
    vectors = vectors_of(version.item_table, "item_id", list(items))
    scored = sorted(
        ((float(vector @ query), items[pk]) for pk, vector in vectors.items() if pk not in seen and keep(items[pk])),
        key=lambda pair: -pair[0],
    )[: 3 * limit]
    factor = lambda item: np.prod([f for matches, f in boosts if matches(item)])  # noqa: E731
    boosted = [(s * factor(i) if s >= 0 else s / factor(i), i.external_id) for s, i in scored]
    return [external_id for _, external_id in sorted(boosted, key=lambda pair: -pair[0])][:limit]


@pytest.mark.parametrize("user", ["u3", "u25"])
def test_boosted_answers_equal_the_straightforward_reference(reader, trained, vector_path, settings, user):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    scenario_put(
        name="shop",
        body={
            "filter": "attributes.price >= 3",
            "boost": [{"expression": "attributes.in_stock = true", "factor": 1.3}],
        },
    )
    query = 'limit=5&scenario=shop&filter=NOT attributes.price = 20&boost=categories CONTAINS "second":1.6'

    found = ids(reader.get(f"/api/v1/users/{user}/recommendations?{query}"))

    expected = reference_answer(
        user,
        limit=5,
        keep=lambda item: item.attributes["price"] >= 3 and item.attributes["price"] != 20,
        boosts=[
            (lambda item: "second" in item.categories, 1.6),
            (lambda item: item.attributes["in_stock"] is True, 1.3),
        ],
    )
    assert found == expected
