"""Health report and the OpenAPI schema and docs."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_health_reports_database_redis_and_models():
    body = APIClient().get("/api/v1/health").json()

    assert body == {"database": "ok", "redis": "ok", "models": {"collaborative": None, "content": None}}


def test_health_reports_redis_down_but_stays_200(tmp_path):
    with override_settings(REDIS_URL=f"unix://{tmp_path}/nothing.sock"):
        response = APIClient().get("/api/v1/health")

    assert response.status_code == 200
    assert response.json()["redis"] == "down"


def test_health_is_503_when_the_database_does_not_answer(monkeypatch):
    monkeypatch.setattr("api.views._database_status", lambda: "down")

    response = APIClient().get("/api/v1/health")

    assert response.status_code == 503
    assert response.json()["database"] == "down"


def test_openapi_schema_documents_the_contract_paths():
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    schema = response.json()
    assert response.status_code == 200
    for path in [
        "/api/v1/items/{item_id}",
        "/api/v1/items/batch",
        "/api/v1/interactions",
        "/api/v1/users/{user_id}",
        "/api/v1/users/{user_id}/interactions",
        "/api/v1/health",
    ]:
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"


def test_docs_page_renders_without_a_cdn():
    import re

    html = APIClient().get("/api/docs/").content.decode()

    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "swagger" in html.lower()
    assert any(a.startswith("/static/drf_spectacular_sidecar/") for a in assets)
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))]


def schema() -> dict:
    return APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def id_patterns(node: object, path: str = "") -> dict[str, str]:
    """Every schema pattern that describes a client id, by where it is (ids in paths, bodies and rows)."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and node["name"] in {"item_id", "user_id"}:
            found[path] = node["schema"]["pattern"]
        for key, value in node.items():
            if key in {"id", "user", "item"} and isinstance(value, dict) and "pattern" in value:
                found[f"{path}/{key}"] = value["pattern"]
            if key in {"items", "negative_items"} and isinstance(value, dict) and "pattern" in value.get("items", {}):
                found[f"{path}/{key}[]"] = value["items"]["pattern"]
            found.update(id_patterns(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found.update(id_patterns(value, f"{path}/{n}"))
    return found


def test_every_client_id_in_the_schema_follows_the_one_id_rule():
    from recsys.ids import EXTERNAL_ID_PATTERN

    patterns = id_patterns(schema())

    assert {p for p in patterns if "SessionRequest" in p} and {p for p in patterns if "{item_id}" in p}
    assert {where: p for where, p in patterns.items() if p != EXTERNAL_ID_PATTERN} == {}
