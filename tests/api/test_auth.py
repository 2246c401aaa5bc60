"""Bearer keys, scopes and revocation."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from recsys.api_keys import api_key_revoke, hash_key
from recsys.models import ApiKey

pytestmark = pytest.mark.django_db


def test_request_without_key_is_401_with_json_error_and_challenge():
    response = APIClient().get("/api/v1/items/x")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer rsk_wrong", "Basic abc", "Bearer ", "Token rsk_x"])
def test_invalid_or_malformed_key_is_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/items/x")

    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"authentication_failed", "not_authenticated"}


def test_key_is_stored_only_as_a_hash(make_client):
    client = make_client("read")

    key = ApiKey.objects.get()
    assert key.key_hash == hash_key(client.raw_key)
    assert client.raw_key not in {key.key_hash, key.prefix, key.name}


def test_revoked_key_is_refused_on_the_very_next_request(make_client):
    client = make_client("read")
    assert client.get("/api/v1/items/x").status_code == 404

    api_key_revoke(key=ApiKey.objects.get())

    assert client.get("/api/v1/items/x").status_code == 401


def test_read_key_cannot_write(make_client):
    response = make_client("read").put("/api/v1/items/x", {"title": "t"}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "write" in response.json()["error"]["message"]


def test_write_only_key_cannot_read(make_client):
    client = make_client("write")
    assert client.put("/api/v1/items/x", {"title": "t"}, format="json").status_code == 201

    assert client.get("/api/v1/items/x").status_code == 403


def test_use_of_a_key_is_recorded(make_client):
    client = make_client("read")

    client.get("/api/v1/items/x")

    assert ApiKey.objects.get().last_used_at is not None


def test_health_needs_no_key():
    assert APIClient().get("/api/v1/health").status_code == 200
