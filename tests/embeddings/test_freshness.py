"""User vectors follow new interactions between retrains (fold-in through the real task path)."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings import services
from embeddings.fold_in import user_vector_fold_in
from embeddings.freshness import fold_ins_pending, users_fold_in
from embeddings.learners import LearnerParams
from embeddings.vectors.rows import vectors_of
from recsys.models import Interaction, Item, User
from recsys.services import interactions_ingest

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(communities):
    version = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=10))
    return services.collaborative_model_train(version_id=version.pk)


def user_vector(version, external_id):
    user = User.objects.get(external_id=external_id)
    return vectors_of(version.user_table, "user_id", [user.pk]).get(user.pk)


def community_scores(version, vector):
    """Mean score of the user's vector over each community's items (i0..i14, i15..i29)."""
    ids = dict(Item.objects.values_list("external_id", "pk"))
    vectors = vectors_of(version.item_table, "item_id", list(ids.values()))
    first = np.mean([vector @ vectors[ids[f"i{n}"]] for n in range(15)])
    second = np.mean([vector @ vectors[ids[f"i{n}"]] for n in range(15, 30)])
    return first, second


def test_new_interactions_of_a_known_user_move_their_vector_toward_the_new_taste(
    trained, django_capture_on_commit_callbacks
):
    before = community_scores(trained, user_vector(trained, "u3"))
    assert before[0] > before[1]

    with django_capture_on_commit_callbacks(execute=True):
        interactions_ingest(
            rows=[
                {"user": "u3", "item": f"i{n}", "type": "purchase", "value": None, "timestamp": "2026-02-01T00:00:00Z"}
                for n in range(15, 30)
            ]
            * 1
        )

    after = community_scores(trained, user_vector(trained, "u3"))
    assert after[1] - after[0] > before[1] - before[0]
    assert after[1] > before[1]


def test_a_user_unknown_to_the_model_gets_a_stored_vector_after_the_fold_in(
    trained, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        interactions_ingest(rows=[{"user": "late", "item": "i20", "type": "purchase"}])

    assert user_vector(trained, "late") is not None
    assert not fold_ins_pending()


def test_fold_in_without_an_active_model_writes_nothing(communities):
    assert users_fold_in(user_ids=list(User.objects.values_list("pk", flat=True))) == 0


def test_sweep_folds_in_users_whose_fold_in_was_never_queued(trained):
    from django.db import connection
    from psycopg import sql

    from embeddings.freshness import users_fold_in_sweep

    before = user_vector(trained, "u3")
    # u3's vector is an hour old; then u3 bought the other community's items and the
    # fold-in could not be queued (on-commit hooks do not run in this test: as if Redis was away).
    with connection.cursor() as cursor:
        # The training data arrived before training (in this one test transaction, a row's arrival,
        # its statement's timestamp, would otherwise be later than the vectors' transaction time).
        cursor.execute("UPDATE recsys_interaction SET created_at = now() - interval '2 hours'")
        cursor.execute(
            sql.SQL(
                "UPDATE {} SET updated_at = now() - interval '1 hour' "
                "WHERE user_id = (SELECT id FROM recsys_user WHERE external_id = 'u3')"
            )
            .format(sql.Identifier(trained.user_table))
            .as_string(connection.connection)
        )
    interactions_ingest(rows=[{"user": "u3", "item": f"i{n}", "type": "purchase"} for n in range(15, 30)])
    with connection.cursor() as cursor:  # they arrived before the sweep's transaction began
        cursor.execute(
            "UPDATE recsys_interaction SET created_at = now() - interval '30 minutes' WHERE created_at >= now()"
        )

    written = users_fold_in_sweep(lookback_seconds=3600)

    first, second = community_scores(trained, user_vector(trained, "u3"))
    assert written == 1
    assert second > first and not np.allclose(before, user_vector(trained, "u3"))
    assert users_fold_in_sweep(lookback_seconds=3600) == 0  # its vector is now newer than its events


def test_bulk_fold_in_in_batches_gives_each_user_the_vector_of_their_own_history(trained, monkeypatch):
    """Batches of users share one read of item vectors; each user must still get exactly the
    vector that their history alone gives (as folded in at request time)."""
    from embeddings import freshness

    monkeypatch.setattr(freshness, "FOLD_IN_BATCH_USERS", 7)  # 40 users: 6 batches, the last one short
    interactions_ingest(rows=[{"user": "u3", "item": "i29", "type": "purchase"}, {"user": "new", "item": "i1"}])
    users = dict(User.objects.values_list("external_id", "pk"))

    assert users_fold_in(user_ids=sorted(users.values())) == len(users)

    for external_id, pk in users.items():
        items = list(Interaction.objects.filter(user_id=pk).values_list("item_id", flat=True).distinct())
        weights = [
            sum(Interaction.objects.filter(user_id=pk, item_id=item).values_list("weight", flat=True)) for item in items
        ]
        alone = user_vector_fold_in(trained, items, np.array(weights, dtype=np.float32))
        # A halfvec version (RECSYS_HALFVEC_MIN_ITEMS) stores float16: 11 significant bits, 2^-11 relative.
        rtol = 1e-5 if trained.vector_type == "vector" else 2**-11
        np.testing.assert_allclose(user_vector(trained, external_id), alone, rtol=rtol, atol=1e-6)


def test_fold_in_skips_users_whose_items_the_model_does_not_know(trained):
    interactions_ingest(rows=[{"user": "stranger", "item": "brand-new", "type": "purchase"}])
    stranger = User.objects.get(external_id="stranger").pk

    assert users_fold_in(user_ids=[stranger]) == 0
    assert user_vector(trained, "stranger") is None


def test_a_stored_weight_too_small_for_single_precision_breaks_neither_the_fold_in_nor_the_users_state(trained):
    # Given a weight stored before values under 1e-6 were refused (1e-300 underflowed float4 sums:
    # the fold-in of every user in its batch failed, and the user's recommendations answered 500)
    from django.utils import timezone

    from embeddings.vectors.rows import user_state_row

    poisoned = User.objects.create(external_id="poisoned")
    Interaction.objects.create(
        user=poisoned,
        item=Item.objects.get(external_id="i3"),
        event_type="rating",
        value=1e-300,
        weight=1e-300,
        timestamp=timezone.now(),
    )
    neighbour = User.objects.create(external_id="neighbour")
    Interaction.objects.create(
        user=neighbour,
        item=Item.objects.get(external_id="i4"),
        event_type="purchase",
        weight=4,
        timestamp=timezone.now(),
    )

    # Then the batch holding both folds in (the poisoned user's history weighs nothing), and the
    # user's state reads
    assert users_fold_in(user_ids=[poisoned.pk, neighbour.pk]) >= 1
    assert user_vector(trained, "neighbour") is not None
    row = user_state_row(user_external_id="poisoned", user_table=trained.user_table, seen=10)
    assert row is not None and len(row[2]) == 1


def test_a_user_whose_history_no_longer_folds_in_loses_the_vector_of_their_earlier_likes(
    trained, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        interactions_ingest(rows=[{"user": "fickle", "item": "i3", "type": "view"}])
    assert user_vector(trained, "fickle") is not None

    # The view outweighed by a dislike of the same item, and another dislike: nothing positive left
    with django_capture_on_commit_callbacks(execute=True):
        interactions_ingest(
            rows=[
                {"user": "fickle", "item": "i3", "type": "dislike"},
                {"user": "fickle", "item": "i4", "type": "dislike"},
            ]
        )

    assert user_vector(trained, "fickle") is None


@pytest.fixture
def committed(transactional_db):
    """Committed rows with their real arrival times (a test transaction stamps every row alike); the
    versions' vector tables (not Django's) dropped before the flush."""
    yield
    from embeddings.models import ModelVersion
    from embeddings.vectors import tables

    for version_id in ModelVersion.objects.values_list("pk", flat=True):
        tables.tables_drop(version_id)


def test_events_that_arrive_while_a_model_trains_are_folded_into_the_new_version_by_the_sweep(
    committed, communities, monkeypatch
):
    from embeddings.freshness import users_fold_in_sweep

    monkeypatch.setattr(services, "READ_AT_MARGIN_SECONDS", 0)
    load = services.weak_negatives_load  # called right after the run has read the interactions

    def an_event_arrives_meanwhile(data):  # type: ignore[no-untyped-def]
        interactions_ingest(rows=[{"user": "u3", "item": f"i{n}", "type": "purchase"} for n in range(15, 30)])
        return load(data)

    monkeypatch.setattr(services, "weak_negatives_load", an_event_arrives_meanwhile)
    version = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=10))
    trained = services.collaborative_model_train(version_id=version.pk)
    before = community_scores(trained, user_vector(trained, "u3"))

    # The new version's vector of u3 was learnt without those events: it is older than them
    assert users_fold_in_sweep(lookback_seconds=3600) == 1
    first, second = community_scores(trained, user_vector(trained, "u3"))
    assert second - first > before[1] - before[0]  # moved toward the community it just bought from
    assert users_fold_in_sweep(lookback_seconds=3600) == 0
