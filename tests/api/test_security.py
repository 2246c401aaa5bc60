"""OWASP API Security Top 10 (2023), API1-API5 and API8, as behaviour: who may call what, keys,
fields clients cannot set, and bounds on everything a request can make the server do."""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.contrib.auth.models import User as StaffUser
from django.core.management import call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from embeddings.models import VectorSpace
from recsys.api_keys import api_key_revoke
from recsys.models import ApiKey, Interaction, Item, User

pytestmark = pytest.mark.django_db
SCOPES = ("read", "write", "admin")

# (method, example path, the one scope it needs); test_scopes.py checks that this covers every route.
ENDPOINTS = [
    ("GET", "/api/v1/items/x", "read"),
    ("PUT", "/api/v1/items/x", "write"),
    ("DELETE", "/api/v1/items/x", "write"),
    ("POST", "/api/v1/items/batch", "write"),
    ("GET", "/api/v1/items/popular", "read"),
    ("GET", "/api/v1/items/x/similar", "read"),
    ("GET", "/api/v1/items/x/duplicates", "read"),
    ("PUT", "/api/v1/items/x/vectors/image", "write"),
    ("GET", "/api/v1/users/u", "read"),
    ("PUT", "/api/v1/users/u", "write"),
    ("DELETE", "/api/v1/users/u", "write"),
    ("GET", "/api/v1/users/u/interactions", "read"),
    ("GET", "/api/v1/users/u/recommendations", "read"),
    ("POST", "/api/v1/interactions", "write"),
    ("POST", "/api/v1/recommendations", "read"),
    ("GET", "/api/v1/search?q=shoes", "read"),
    ("GET", "/api/v1/models", "admin"),
    ("POST", "/api/v1/models/train", "admin"),
    ("POST", "/api/v1/models/1/activate", "admin"),
    ("POST", "/api/v1/impressions", "write"),
    ("GET", "/api/v1/users/u/hidden", "read"),
    ("POST", "/api/v1/users/u/hidden", "write"),
    ("DELETE", "/api/v1/users/u/hidden", "write"),
    ("GET", "/api/v1/scenarios", "admin"),
    ("GET", "/api/v1/scenarios/home", "admin"),
    ("PUT", "/api/v1/scenarios/home", "admin"),
    ("DELETE", "/api/v1/scenarios/home", "admin"),
    ("GET", "/api/v1/experiments", "admin"),
    ("POST", "/api/v1/experiments", "admin"),
    ("GET", "/api/v1/experiments/1", "admin"),
    ("POST", "/api/v1/experiments/1/stop", "admin"),
    ("POST", "/api/v1/experiments/1/promote", "admin"),
    ("POST", "/api/v1/experiments/1/withdraw", "admin"),
]


def call(client: APIClient, method: str, path: str, body: object = None):
    return getattr(client, method.lower())(path, body if body is not None else {}, format="json")


# --- API1, API5: every endpoint needs a key, and the one scope it declares ------------------------


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_endpoint_refuses_no_key_401_and_a_key_without_its_scope_403(make_client, method, path, scope):
    assert call(APIClient(), method, path).status_code == 401

    others = make_client(*[s for s in SCOPES if s != scope])
    response = call(others, method, path)

    assert response.status_code == 403, response.content
    assert scope in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_endpoint_lets_a_key_with_its_scope_past_the_permission_check(make_client, method, path, scope):
    if "/vectors/" in path:  # writing into an existing space needs write; creating one needs admin too
        call(make_client("write", "admin"), "PUT", "/api/v1/items/x", {"title": "t"})
        call(make_client("write", "admin"), method, path, {"vector": [1.0, 2.0]})

    response = call(make_client(scope), method, path)

    assert response.status_code not in {401, 403}, response.content


# --- API2: keys ------------------------------------------------------------------------------------


def test_a_revoked_key_is_refused_on_the_next_request_even_on_a_cached_answer(make_client):
    client = make_client("read")
    assert client.get("/api/v1/items/popular").status_code == 200  # now cached

    api_key_revoke(key=ApiKey.objects.get())

    assert client.get("/api/v1/items/popular").status_code == 401


def test_raw_keys_never_reach_the_logs_or_the_sql(make_client, caplog):
    valid = make_client("read")
    revoked = make_client("write")
    api_key_revoke(key=ApiKey.objects.get(name="test-write"))
    wrong = "rsk_" + "A" * 43
    connection.force_debug_cursor = True  # log every SQL statement with its parameters
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="django.db.backends"):
            valid.get("/api/v1/items/x")
            valid.get("/api/v1/models")  # 403
            revoked.get("/api/v1/items/x")  # 401
            stranger = APIClient()
            stranger.credentials(HTTP_AUTHORIZATION=f"Bearer {wrong}")
            stranger.get("/api/v1/items/x")
            stranger.credentials(HTTP_AUTHORIZATION=f"Token {wrong}")
            stranger.get("/api/v1/items/x")
    finally:
        connection.force_debug_cursor = False

    assert "recsys_apikey" in caplog.text  # the capture did see the key lookups
    for raw in (valid.raw_key, revoked.raw_key, wrong):
        assert raw not in caplog.text
        assert raw[8:] not in caplog.text


def test_a_key_is_shown_once_and_only_its_hash_and_prefix_are_kept(capsys):
    call_command("create_api_key", "--name", "shop", "--scopes", "read")
    printed = capsys.readouterr().out
    raw = re.search(r"rsk_[A-Za-z0-9_-]{20,}", printed).group(0)

    stored = ApiKey.objects.get(name="shop")
    assert raw not in json.dumps([str(getattr(stored, f.attname)) for f in ApiKey._meta.fields])
    assert raw.startswith(stored.prefix) and len(stored.prefix) < 12


# --- API3: clients cannot set fields they do not own (no mass assignment) -------------------------

INTERNAL_ITEM_FIELDS = ["id", "pk", "is_stub", "created_at", "updated_at", "vectors", "search_vector"]


@pytest.mark.parametrize("field", INTERNAL_ITEM_FIELDS)
def test_item_upsert_refuses_internal_fields(writer, field):
    response = writer.put("/api/v1/items/x", {"title": "t", field: "2001-01-01T00:00:00Z"}, format="json")

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert not Item.objects.exists()


@pytest.mark.parametrize("field", ["pk", "is_stub", "created_at", "updated_at", "vectors"])
def test_item_batch_rows_with_internal_fields_are_refused_and_not_stored(writer, field):
    rows = [{"id": "a", "title": "ok"}, {"id": "b", field: True}]

    body = writer.post("/api/v1/items/batch", {"items": rows}, format="json").json()

    assert body["created"] == 1 and body["errors"][0]["index"] == 1
    assert list(Item.objects.values_list("external_id", flat=True)) == ["a"]


@pytest.mark.parametrize("field", ["id", "pk", "created_at", "updated_at"])
def test_user_upsert_refuses_internal_fields(writer, field):
    response = writer.put("/api/v1/users/u", {"attributes": {}, field: 7}, format="json")

    assert response.status_code == 400
    assert not User.objects.exists()


@pytest.mark.parametrize("field", ["weight", "id", "user_id", "item_id", "created_at", "event_type"])
def test_interaction_rows_cannot_set_weights_ids_or_timestamps_of_their_own(writer, field):
    row = {"user": "u", "item": "i", "type": "view", "timestamp": "2026-01-01T00:00:00Z", field: 1000}

    body = writer.post("/api/v1/interactions", {"interactions": [row]}, format="json").json()

    assert body["errors"][0]["error"]["code"] == "validation_error"
    assert not Interaction.objects.exists()


def test_a_stored_interaction_weighs_what_its_event_type_says(writer):
    row = {"user": "u", "item": "i", "type": "purchase", "timestamp": "2026-01-01T00:00:00Z"}
    writer.post("/api/v1/interactions", {"interactions": [row]}, format="json")

    assert Interaction.objects.get().weight == 8.0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/recommendations", {"items": ["a"], "owner": "someone-else"}),
        ("PUT", "/api/v1/items/x/vectors/image", {"vector": [1.0, 2.0], "dimensions": 2}),
        ("POST", "/api/v1/models/train", {"kind": "collaborative", "status": "active"}),
        ("POST", "/api/v1/models/train", {"kind": "collaborative", "version": 1}),
        ("POST", "/api/v1/items/batch", {"items": [], "created": 5}),
        ("POST", "/api/v1/interactions", {"interactions": [], "user": "u"}),
    ],
)
def test_other_bodies_refuse_fields_they_do_not_define(admin_client_api, method, path, body):
    Item.objects.create(external_id="x")

    response = call(admin_client_api, method, path, body)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"


# --- API4: bounded resource consumption -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/items/popular",
        "/api/v1/items/x/similar",
        "/api/v1/items/x/duplicates",
        "/api/v1/users/u/interactions",
        "/api/v1/users/u/recommendations",
        "/api/v1/search?q=a",
        "/api/v1/models",
    ],
)
def test_limit_above_200_is_refused(admin_client_api, path):
    separator = "&" if "?" in path else "?"

    response = admin_client_api.get(f"{path}{separator}limit=201")

    assert response.status_code == 400
    assert "limit" in response.json()["error"]["details"]


def test_search_query_longer_than_512_characters_is_refused(reader):
    assert reader.get("/api/v1/search?q=" + "a" * 512 + "&mode=keyword").status_code == 200
    assert reader.get("/api/v1/search?q=" + "a" * 513 + "&mode=keyword").status_code == 400


def test_session_with_more_than_100_items_is_refused(reader):
    ids = [f"i{n}" for n in range(101)]

    assert reader.post("/api/v1/recommendations", {"items": ids}, format="json").status_code == 400
    assert (
        reader.post("/api/v1/recommendations", {"items": ["a"], "negative_items": ids}, format="json").status_code
        == 400
    )


def test_exclude_list_of_more_than_200_ids_is_refused(reader):
    exclude = ",".join(f"i{n}" for n in range(201))

    assert reader.get(f"/api/v1/users/u/recommendations?exclude={exclude}").status_code == 400


def test_custom_vectors_are_bounded_by_the_dimension_setting(admin_client_api, settings):
    settings.RECSYS_CUSTOM_VECTOR_MAX_DIMENSIONS = 4
    admin_client_api.put("/api/v1/items/x", {"title": "t"}, format="json")

    too_big = admin_client_api.put("/api/v1/items/x/vectors/image", {"vector": [1.0] * 5}, format="json")
    fits = admin_client_api.put("/api/v1/items/x/vectors/image", {"vector": [1.0] * 4}, format="json")

    assert (too_big.status_code, fits.status_code) == (400, 201)


def test_creating_a_custom_space_needs_admin_and_writing_into_one_needs_write(make_client):
    owner, ingester = make_client("write", "admin"), make_client("write")
    owner.put("/api/v1/items/x", {"title": "t"}, format="json")

    refused = ingester.put("/api/v1/items/x/vectors/image", {"vector": [1.0, 2.0]}, format="json")
    created = owner.put("/api/v1/items/x/vectors/image", {"vector": [1.0, 2.0]}, format="json")
    written = ingester.put("/api/v1/items/x/vectors/image", {"vector": [2.0, 1.0]}, format="json")

    assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
    assert (created.status_code, written.status_code) == (201, 200)


def test_custom_spaces_are_capped_by_the_setting(make_client, settings):
    settings.RECSYS_MAX_CUSTOM_SPACES = 2
    owner = make_client("write", "admin")
    owner.put("/api/v1/items/x", {"title": "t"}, format="json")

    statuses = [owner.put(f"/api/v1/items/x/vectors/s{n}", {"vector": [1.0, 2.0]}, format="json") for n in range(3)]
    again = owner.put("/api/v1/items/x/vectors/s1", {"vector": [2.0, 1.0]}, format="json")

    assert [r.status_code for r in statuses] == [201, 201, 409]
    assert statuses[2].json()["error"]["details"] == {"max_custom_spaces": 2}
    assert again.status_code == 200  # existing spaces keep taking vectors
    assert VectorSpace.objects.count() == 2


def test_ingestion_batches_are_bounded_by_rows(writer, settings):
    settings.RECSYS_MAX_BATCH_ROWS = 3
    rows = [{"id": f"i{n}"} for n in range(4)]

    assert writer.post("/api/v1/items/batch", {"items": rows}, format="json").status_code == 413
    assert writer.post("/api/v1/items/batch", {"items": rows[:3]}, format="json").status_code == 200


def test_a_body_without_a_content_length_is_not_read(writer):
    # Chunked uploads reach Django with no CONTENT_LENGTH: it reads nothing, so no size escapes the limit.
    body = json.dumps({"items": [{"id": "a", "text": "x" * 4000}]})

    response = writer.generic("POST", "/api/v1/items/batch", body, content_type="application/json", CONTENT_LENGTH="")

    assert response.status_code == 400
    assert not Item.objects.exists()


# --- the Django admin: staff login and CSRF ----------------------------------------------------------


@pytest.fixture
def staff() -> StaffUser:
    return StaffUser.objects.create_user("operator", password="a-long-pass-phrase-1", is_staff=True, is_superuser=True)


@pytest.mark.parametrize("path", ["/admin/", "/admin/dashboard/", "/admin/preview/", "/admin/recsys/apikey/"])
def test_admin_pages_need_a_staff_login(path):
    user = StaffUser.objects.create_user("customer", password="a-long-pass-phrase-1", is_staff=False)
    anonymous = Client().get(path)
    customer = Client()
    customer.force_login(user)  # login() skips the request that django-axes needs to count attempts

    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert customer.get(path).status_code == 302


def test_admin_login_and_actions_need_a_csrf_token(staff):
    browser = Client(enforce_csrf_checks=True)
    login = browser.post("/admin/login/", {"username": "operator", "password": "a-long-pass-phrase-1"})
    assert login.status_code == 403  # no token

    browser.force_login(staff)
    key = ApiKey.objects.create(name="k", prefix="rsk_x", key_hash="h" * 64, scopes=["read"])
    forged = browser.post("/admin/recsys/apikey/", {"action": "revoke", "_selected_action": [key.pk]})

    assert forged.status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None
