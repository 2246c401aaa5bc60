"""Recommendations over the API on a model trained from two taste communities.

Users u0..u19 like items i0..i14 and users u20..u39 like items i15..i29 (see conftest).
"""

from __future__ import annotations

import pytest

from embeddings import services
from embeddings.learners import LearnerParams
from embeddings.popularity import popularity_refresh
from recsys.models import Item
from recsys.services import interactions_ingest, items_upsert

pytestmark = pytest.mark.django_db


def community(item_id: str) -> int:
    return 0 if int(item_id.removeprefix("i")) < 15 else 1


@pytest.fixture(params=["als", "ease"])
def trained(request, communities, settings):
    """The same answers must hold for both kinds of model the service can choose."""
    settings.RECSYS_CF_TUNE = False
    items_upsert(
        rows=[{"id": f"i{n}", "title": f"Item {n}", "categories": ["first" if n < 15 else "second"]} for n in range(30)]
    )
    regularization = 10.0 if request.param == "ease" else 0.05
    params = LearnerParams(algorithm=request.param, factors=8, iterations=10, regularization=regularization)
    version = services.collaborative_version_create(params=params)
    return services.collaborative_model_train(version_id=version.pk)


def recommend(client, user, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = client.get(f"/api/v1/users/{user}/recommendations?{query}")
    assert response.status_code == 200, response.content
    return response.json()


def seen_by(user: str) -> set[str]:
    from recsys.models import Interaction

    return set(Interaction.objects.filter(user__external_id=user).values_list("item__external_id", flat=True))


def test_known_user_gets_unseen_items_of_their_community(reader, trained):
    body = recommend(reader, "u3", limit=3)

    ids = [item["id"] for item in body["items"]]
    assert body["strategy"] == "collaborative"
    assert body["model"] == {"kind": "collaborative", "version": trained.pk}
    assert len(ids) == 3 and not set(ids) & seen_by("u3")
    assert all(community(i) == 0 for i in ids)
    assert [item["score"] for item in body["items"]] == sorted((item["score"] for item in body["items"]), reverse=True)


def test_a_user_with_only_dislikes_gets_popular_items_they_did_not_dislike(reader, trained):
    # ALS folded such a user in to a zero vector: an arbitrary list, every score 0 (the probe of 2026-12-04)
    interactions_ingest(rows=[{"user": "grumpy", "item": f"i{n}", "type": "dislike"} for n in (1, 2, 3)])

    body = recommend(reader, "grumpy", limit=5)

    assert body["strategy"] == "popular" and len(body["items"]) == 5
    assert not {item["id"] for item in body["items"]} & {"i1", "i2", "i3"}


def test_unknown_user_gets_popular_items(reader, trained):
    body = recommend(reader, "stranger", limit=3)

    assert body["strategy"] == "popular" and body["model"] is None
    assert len(body["items"]) == 3


def test_user_new_since_training_is_folded_in_from_their_history(reader, trained):
    interactions_ingest(rows=[{"user": "newcomer", "item": f"i{n}", "type": "purchase"} for n in (20, 21, 22)])

    body = recommend(reader, "newcomer", limit=5)

    assert body["strategy"] == "collaborative_fold_in"
    assert sum(community(i["id"]) == 1 for i in body["items"]) >= 4
    assert not {i["id"] for i in body["items"]} & {"i20", "i21", "i22"}


def test_filters_exclusions_and_hidden_items_are_applied_in_the_query(reader, trained):
    Item.objects.filter(external_id="i0").update(is_hidden=True)

    body = recommend(reader, "u25", limit=10, category="first", exclude="i1,i2")

    ids = {item["id"] for item in body["items"]}
    assert len(ids) == 10
    assert all(community(i) == 0 for i in ids)
    assert not ids & {"i0", "i1", "i2"}


def test_include_seen_allows_the_users_own_items(reader, trained):
    body = recommend(reader, "u3", limit=15, include_seen="true")

    assert {item["id"] for item in body["items"]} & seen_by("u3")


def test_explain_names_the_users_past_items(reader, trained):
    body = recommend(reader, "u3", limit=3, explain="true")

    for item in body["items"]:
        because = {reason["id"] for reason in item["reason"]["because"]}
        assert because and because <= seen_by("u3")
        contributions = [r["contribution"] for r in item["reason"]["because"]]
        assert contributions == sorted(contributions, reverse=True)
        if trained.algorithm == "ease":  # terms of the score itself (others may be negative): same scale
            assert contributions[0] <= 2 * item["score"]


def test_diversity_still_returns_limit_items(reader, trained):
    plain = recommend(reader, "u3", limit=5)
    diverse = recommend(reader, "u3", limit=5, diversity="0.9")

    assert len(diverse["items"]) == 5
    assert [i["id"] for i in diverse["items"]] != [i["id"] for i in plain["items"]]


@pytest.mark.parametrize(
    "params", ["limit=0", "diversity=2", "explain=maybe", "exclude=bad%20id", "category=" + "x" * 129]
)
def test_bad_parameters_are_400(reader, trained, params):
    assert reader.get(f"/api/v1/users/u3/recommendations?{params}").status_code == 400


def test_similar_items_come_from_the_same_community_and_exclude_the_item(reader, trained):
    body = reader.get("/api/v1/items/i3/similar?limit=5").json()

    ids = [item["id"] for item in body["items"]]
    assert body["strategy"] == "collaborative" and "i3" not in ids
    assert sum(community(i) == 0 for i in ids) >= 4


def test_new_item_without_a_vector_gets_popular_items_of_its_category(reader, trained):
    items_upsert(rows=[{"id": "fresh", "title": "Brand new", "categories": ["second"]}])

    body = reader.get("/api/v1/items/fresh/similar?limit=3").json()

    assert body["strategy"] == "popular_in_category"
    assert all(community(item["id"]) == 1 for item in body["items"])


def test_similar_for_unknown_item_is_404(reader, trained):
    assert reader.get("/api/v1/items/ghost/similar").status_code == 404


def session(client, **body):
    response = client.post("/api/v1/recommendations", {"limit": 28, **body}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_session_recommendations_follow_positives_and_exclude_given_items(reader, trained):
    body = session(reader, items=["i20", "i21"], limit=5)

    ids = {item["id"] for item in body["items"]}
    assert body["strategy"] == "collaborative_session"
    assert not ids & {"i20", "i21"}
    assert sum(community(i) == 1 for i in ids) >= 4


def test_a_body_field_sent_in_the_query_string_is_refused_not_ignored(reader, trained):
    # Given a session request whose limit and items were put in the URL instead of the body
    response = reader.post("/api/v1/recommendations?limit=3&negative_items=i3", {"items": ["i20"]}, format="json")

    # Then it is refused, naming the fields (before: 200 and 10 items)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error" and set(error["details"]) == {"limit", "negative_items"}


def test_a_rule_given_both_in_the_body_and_the_query_string_is_refused(reader, trained):
    # The rules (filter, boost, scenario, user) may come either way, as on the GET endpoints, but not both
    body = {"items": ["i20"], "filter": "category = 'x'"}
    response = reader.post("/api/v1/recommendations?filter=category%3D%27y%27", body, format="json")

    assert response.status_code == 400 and set(response.json()["error"]["details"]) == {"filter"}


def test_a_negative_item_pushes_down_what_resembles_it(reader, trained):
    closest = reader.get("/api/v1/items/i3/similar?limit=1").json()["items"][0]["id"]

    without = {i["id"]: i["score"] for i in session(reader, items=["i20", "i21"])["items"]}
    with_negative = session(reader, items=["i20", "i21"], negative_items=["i3"])

    scores = {i["id"]: i["score"] for i in with_negative["items"]}
    assert "i3" not in scores
    assert scores[closest] < without[closest]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"items": []},
        {"items": "i1"},
        {"items": ["i1"], "limit": 0},
        {"items": ["i1"], "color": "red"},
        {"items": ["i1"] * 101},
        {"items": [1]},
        {"items": ["batch"]},
        {"items": ["i1"], "negative_items": ["a/similar"]},
        {"items": ["i1", "i2"], "negative_items": ["i2"]},  # liked and disliked: the query cancels out
        {"items": ["i1"], "limit": "5"},
        {"items": ["i1"], "limit": 5.5},
        {"items": ["i1"], "limit": True},
        {"items": ["i1"], "category": 5},
        {"items": ["i1"], "category": "x" * 129},
        ["i1"],
    ],
)
def test_bad_session_bodies_are_400(reader, trained, body):
    response = reader.post("/api/v1/recommendations", body, format="json")

    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"


def test_a_session_body_names_its_unknown_and_invalid_fields(reader, trained):
    body = {"items": ["i1", "bad id"], "colour": "red"}

    details = reader.post("/api/v1/recommendations", body, format="json").json()["error"]["details"]

    assert details == {"colour": ["unknown field"]}
    details = reader.post("/api/v1/recommendations", {"items": ["i1", "bad id"]}, format="json").json()
    assert "items" in details["error"]["details"]


def test_popular_items_rank_by_interactions_and_filter_by_category(reader, trained):
    interactions_ingest(rows=[{"user": f"fan{n}", "item": "i29", "type": "purchase"} for n in range(30)])
    popularity_refresh()  # what beat does every few minutes

    everything = reader.get("/api/v1/items/popular?limit=3").json()
    first = reader.get("/api/v1/items/popular?limit=3&category=first").json()

    assert everything["items"][0]["id"] == "i29" and everything["strategy"] == "popular"
    assert all(community(item["id"]) == 0 for item in first["items"])
    assert reader.get("/api/v1/items/popular?window=week").status_code == 400


def test_recommendations_work_before_any_model_exists(reader, communities):
    body = recommend(reader, "u3", limit=4)

    assert body["strategy"] == "popular" and len(body["items"]) == 4
    assert not {i["id"] for i in body["items"]} & seen_by("u3")


def test_personalised_recommendations_use_a_bounded_number_of_queries(reader, trained, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        recommend(reader, "u3", limit=10)


def test_popular_items_come_from_the_refreshed_scores(reader, trained):
    interactions_ingest(rows=[{"user": f"fan{n}", "item": "i7", "type": "purchase"} for n in range(30)])
    popularity_refresh()
    interactions_ingest(rows=[{"user": f"late{n}", "item": "i8", "type": "purchase"} for n in range(60)])

    before = reader.get("/api/v1/items/popular?limit=2").json()
    popularity_refresh()
    after = reader.get("/api/v1/items/popular?limit=2").json()

    assert before["items"][0]["id"] == "i7"  # i8's new fans wait for the refresh
    assert [item["id"] for item in after["items"]] == ["i8", "i7"]
    assert reader.get("/api/v1/items/popular?limit=2&window=30d").json()["items"][0]["id"] == "i8"


def test_popular_items_before_any_refresh_are_counted_on_demand(reader, communities):
    interactions_ingest(rows=[{"user": f"fan{n}", "item": "i4", "type": "purchase"} for n in range(30)])

    body = reader.get("/api/v1/items/popular?limit=1").json()

    assert body["items"][0]["id"] == "i4" and body["strategy"] == "popular"


def test_ids_holding_slashes_and_route_words_reach_the_route_their_path_ends_in():
    # The hot routes are tried first; every route ends in its own suffix, so the order cannot steal a path.
    from django.urls import resolve

    assert (
        resolve("/api/v1/users/a/hidden/recommendations").url_name,
        resolve("/api/v1/users/a/hidden/recommendations").kwargs,
    ) == ("user-recommendations", {"user_id": "a/hidden"})
    assert resolve("/api/v1/users/a/recommendations/hidden").url_name == "user-hidden"
    assert resolve("/api/v1/users/a/recommendations/x").url_name == "user-detail"
    assert resolve("/api/v1/items/popular/similar").kwargs == {"item_id": "popular"}
    assert resolve("/api/v1/items/popular").url_name == "items-popular"
    assert resolve("/api/v1/items/a/similar/vectors/text").url_name == "item-vector"
