"""JSON is chosen without parsing the Accept header when the client asks for JSON or anything;
every other Accept header still goes through DRF's negotiation."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*"])
def test_json_answers_for_plain_accept_headers(reader, accept):
    headers = {"HTTP_ACCEPT": accept} if accept else {}

    response = reader.get("/api/v1/items/popular", **headers)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "items" in response.json()


def test_an_accept_header_json_cannot_satisfy_is_still_406(reader):
    response = reader.get("/api/v1/items/popular", HTTP_ACCEPT="text/html")

    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"


def test_a_weighted_accept_list_is_negotiated_as_before(reader):
    response = reader.get("/api/v1/items/popular", HTTP_ACCEPT="text/html;q=1, application/json;q=0.5")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


def test_an_unknown_format_parameter_is_still_404(reader):
    assert reader.get("/api/v1/items/popular?format=xml").status_code == 404
