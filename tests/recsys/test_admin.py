"""The admin pages of the core data load for staff, and creating an API key shows it once."""

from __future__ import annotations

import pytest

from recsys.api_keys import hash_key
from recsys.models import ApiKey
from tests.factories import InteractionFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["user", "item", "interaction", "eventtype", "apikey"])
def test_changelists_load(admin_client, model):
    InteractionFactory()

    assert admin_client.get(f"/admin/recsys/{model}/").status_code == 200


def test_creating_a_key_in_the_admin_shows_it_once_and_stores_its_hash(admin_client):
    response = admin_client.post(
        "/admin/recsys/apikey/add/", {"name": "shop", "scopes": "read,write", "rate_limit": ""}, follow=True
    )

    shown = [str(m) for m in response.context["messages"]]
    raw_key = shown[0].rsplit(" ", 1)[-1]
    key = ApiKey.objects.get(name="shop")
    assert key.key_hash == hash_key(raw_key)
    assert key.scopes == ["read", "write"]


def test_admin_needs_a_staff_login(client):
    response = client.get("/admin/recsys/item/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_unknown_scopes_are_refused_in_the_admin_form(admin_client):
    response = admin_client.post("/admin/recsys/apikey/add/", {"name": "x", "scopes": "read,root", "rate_limit": ""})

    assert response.status_code == 200
    assert "root" in response.content.decode()
    assert not ApiKey.objects.exists()
