"""User upsert, read and delete (the right to be forgotten)."""

from __future__ import annotations

import pytest

from recsys.models import Interaction, User
from tests.factories import InteractionFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_put_creates_then_updates_a_user(writer):
    created = writer.put("/api/v1/users/alice", {"attributes": {"plan": "pro"}}, format="json")
    updated = writer.put("/api/v1/users/alice", {"attributes": {"plan": "free"}}, format="json")

    assert (created.status_code, updated.status_code) == (201, 200)
    assert writer.get("/api/v1/users/alice").json()["attributes"] == {"plan": "free"}


def test_put_without_attributes_keeps_them(writer):
    writer.put("/api/v1/users/alice", {"attributes": {"plan": "pro"}}, format="json")

    writer.put("/api/v1/users/alice", {}, format="json")

    assert User.objects.get(external_id="alice").attributes == {"plan": "pro"}


@pytest.mark.parametrize("body", [{"attributes": "x"}, {"name": "Alice"}, ["attributes"]])
def test_invalid_user_body_is_400(writer, body):
    response = writer.put("/api/v1/users/alice", body, format="json")

    assert response.status_code == 400
    assert not User.objects.exists()


def test_delete_forgets_the_user_and_all_their_interactions(writer):
    user = UserFactory(external_id="bob")
    InteractionFactory.create_batch(4, user=user)
    other = InteractionFactory()

    response = writer.delete("/api/v1/users/bob")

    assert response.status_code == 204
    assert not User.objects.filter(external_id="bob").exists()
    assert list(Interaction.objects.values_list("pk", flat=True)) == [other.pk]
    assert writer.get("/api/v1/users/bob").status_code == 404


def test_unknown_user_is_404(writer):
    assert writer.get("/api/v1/users/ghost").status_code == 404
    assert writer.delete("/api/v1/users/ghost").status_code == 404
    assert writer.get("/api/v1/users/ghost/interactions").status_code == 404
