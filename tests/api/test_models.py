"""Training and model versions over the API (scope admin); Celery runs eagerly in unit tests."""

from __future__ import annotations

import pytest

from embeddings.models import ModelVersion, Status

pytestmark = pytest.mark.django_db


def test_train_answers_202_with_the_run_and_produces_an_active_version(admin_client_api, communities):
    response = admin_client_api.post("/api/v1/models/train", {"kind": "collaborative"}, format="json")

    assert response.status_code == 202
    body = response.json()
    version = ModelVersion.objects.get(pk=body["training_run"])
    assert version.task_id == body["task_id"]
    assert version.status == Status.ACTIVE
    listed = admin_client_api.get("/api/v1/models").json()
    assert listed[0]["version"] == version.pk and listed[0]["metrics"]["ndcg@10"] > 0
    health = admin_client_api.get("/api/v1/health").json()
    assert health["models"]["collaborative"]["version"] == version.pk


@pytest.mark.parametrize(
    "body", [{}, {"kind": "magic"}, {"kind": "collaborative", "x": 1}, {"kind": "content", "encoder": "x"}]
)
def test_train_refuses_bad_bodies(admin_client_api, body):
    response = admin_client_api.post("/api/v1/models/train", body, format="json")

    assert response.status_code == 400
    assert not ModelVersion.objects.exists()


def test_train_while_a_run_holds_the_lease_is_409(admin_client_api):
    from embeddings.services import collaborative_version_create

    collaborative_version_create()

    response = admin_client_api.post("/api/v1/models/train", {"kind": "collaborative"}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_train_when_the_broker_is_down_is_503_and_releases_the_claim(admin_client_api, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("redis refused")

    monkeypatch.setattr("embeddings.tasks.collaborative_model_train.apply_async", down)

    response = admin_client_api.post("/api/v1/models/train", {"kind": "collaborative"}, format="json")

    assert response.status_code == 503
    assert ModelVersion.objects.get().status == Status.FAILED


def test_activate_rolls_back_and_refuses_unservable_versions(admin_client_api, communities):
    first = admin_client_api.post("/api/v1/models/train", {"kind": "collaborative"}, format="json").json()
    admin_client_api.post("/api/v1/models/train", {"kind": "collaborative"}, format="json")
    failed = ModelVersion.objects.create(kind="collaborative", algorithm="als", status=Status.FAILED)

    rolled_back = admin_client_api.post(f"/api/v1/models/{first['training_run']}/activate")
    refused = admin_client_api.post(f"/api/v1/models/{failed.pk}/activate")
    missing = admin_client_api.post("/api/v1/models/999999/activate")

    assert rolled_back.status_code == 200 and rolled_back.json()["status"] == "active"
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_not_ready"
    assert missing.status_code == 404


def test_model_endpoints_need_the_admin_scope(writer):
    assert writer.get("/api/v1/models").status_code == 403
    assert writer.post("/api/v1/models/train", {"kind": "collaborative"}, format="json").status_code == 403


def test_item_reports_its_vector_in_the_active_version(admin_client_api, communities):
    version = admin_client_api.post("/api/v1/models/train", {"kind": "collaborative"}, format="json").json()

    body = admin_client_api.get("/api/v1/items/i3").json()

    assert body["vectors"]["collaborative"]["version"] == version["training_run"]
    assert body["vectors"]["collaborative"]["updated_at"].endswith("Z")
