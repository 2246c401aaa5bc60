"""The one-statement personalised search: same answers as the general path, in one round trip.

Users u0..u19 like items i0..i14 and users u20..u39 like items i15..i29 (see conftest).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.db import connection

from embeddings import services
from embeddings.learners import LearnerParams
from embeddings.recommendations import user_recommendations_list
from embeddings.vectors import search
from embeddings.vectors.search import Filters, user_nearest_items
from recsys.models import Interaction, Item
from recsys.services import interactions_ingest, items_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["als", "ease"])
def version(request, communities, settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    items_upsert(
        rows=[{"id": f"i{n}", "title": f"Item {n}", "categories": ["first" if n < 15 else "second"]} for n in range(30)]
    )
    regularization = 10.0 if request.param == "ease" else 0.05
    params = LearnerParams(algorithm=request.param, factors=8, iterations=10, regularization=regularization)
    created = services.collaborative_version_create(params=params)
    return services.collaborative_model_train(version_id=created.pk)


def nearest(version, user: str, *, limit: int = 30, seen: int = 5000, filters: Filters | None = None):
    return user_nearest_items(
        user_table=version.user_table,
        item_table=version.item_table,
        user_external_id=user,
        limit=limit,
        filters=filters or Filters(),
        seen=seen,
    )


def seen_by(user: str) -> set[str]:
    return set(Interaction.objects.filter(user__external_id=user).values_list("item__external_id", flat=True))


def test_known_user_gets_the_same_ranking_as_the_general_path(version):
    # explain=true reads the user's state and searches in two statements: the reference.
    for user in ("u3", "u25"):
        fast = user_recommendations_list(user_external_id=user, limit=8)
        general = user_recommendations_list(user_external_id=user, limit=8, explain=True)

        assert fast.strategy == general.strategy == "collaborative"
        assert [(i.id, i.score) for i in fast.items] == [(i.id, i.score) for i in general.items]
        assert len(fast.items) == 8


def test_seen_items_are_skipped_unless_seen_is_zero(version):
    skipping = {n.external_id for n in nearest(version, "u3")}
    including = {n.external_id for n in nearest(version, "u3", seen=0)}

    assert skipping == {f"i{n}" for n in range(30)} - seen_by("u3")
    assert including == {f"i{n}" for n in range(30)}


def test_only_the_most_recent_seen_items_are_skipped(version):
    report = interactions_ingest(
        rows=[{"user": "u3", "item": "i29", "type": "view", "timestamp": "2026-06-01T00:00:00Z"}]
    )
    assert not report.errors

    answer = {n.external_id for n in nearest(version, "u3", seen=1)}

    assert "i29" not in answer
    assert seen_by("u3") - {"i29"} <= answer


def test_hidden_excluded_and_other_category_items_are_skipped(version):
    Item.objects.filter(external_id="i0").update(is_hidden=True)
    excluded = tuple(Item.objects.filter(external_id__in=["i1", "i2"]).values_list("pk", flat=True))

    answer = {n.external_id for n in nearest(version, "u25", filters=Filters(excluded, "first"))}

    assert answer == {f"i{n}" for n in range(3, 15)}


def test_unknown_users_and_users_without_a_stored_vector_are_left_to_the_general_path(version):
    interactions_ingest(rows=[{"user": "newcomer", "item": "i20", "type": "purchase"}])

    assert nearest(version, "stranger") is None
    assert nearest(version, "newcomer") is None
    assert user_recommendations_list(user_external_id="newcomer", limit=3).strategy == "collaborative_fold_in"


def test_a_known_users_recommendations_cost_one_statement(version, monkeypatch):
    statements: list[Any] = []
    execute = psycopg.Cursor.execute

    def counted(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if "SAVEPOINT" not in str(query):  # the test's transaction; serving runs in autocommit
            statements.append(query)
        return execute(cursor, query, *args, **kwargs)

    user_recommendations_list(user_external_id="u3", limit=5)  # the active version, session settings
    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    answer = user_recommendations_list(user_external_id="u3", limit=5)

    assert answer.strategy == "collaborative" and len(answer.items) == 5
    assert len(statements) == 1, statements


def test_repeated_searches_are_prepared_statements_with_literal_limits(version):
    # Prepared, PostgreSQL may skip planning (a generic plan); a LIMIT parameter would rule that out.
    for _ in range(8):
        user_recommendations_list(user_external_id="u3", limit=5)

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s", ["%WITH u AS%"])
        statements = [row[0] for row in cursor.fetchall()]
    assert len(statements) == 1
    assert "LIMIT 5\n" in statements[0] and "LIMIT 5000)" in statements[0]


@pytest.mark.parametrize(("limit", "first"), [(5, 64), (16, 64), (20, 256), (30, 256), (300, 1000)])
def test_without_iterative_scans_a_users_search_starts_wide_enough_for_their_seen_items(
    version, monkeypatch, limit, first
):
    # pgvector < 0.8: the index answers at most ef_search candidates and the user's seen items are
    # skipped after it, so the first search asks for >= 4 x limit (on the ×4 ladder from 64).
    monkeypatch.setattr(search, "iterative_scans_available", lambda: False)
    asked: list[str] = []
    rows = search._rows

    def recorded(statement: Any, params: Any, *, session: Any, local: Any) -> Any:
        asked.append(dict(session).get("hnsw.ef_search", "exact"))
        return rows(statement, params, session=session, local=local)

    monkeypatch.setattr(search, "_rows", recorded)
    found = nearest(version, "u3", limit=limit)

    assert asked[0] == str(first)
    assert [n.external_id for n in found] == [n.external_id for n in nearest(version, "u3", limit=30)][:limit]


def test_repeated_searches_run_a_generic_plan_without_planning_each_time(version):
    # An exclusion array parameter, even an empty one, made the generic plan look dearer than a
    # custom one at 100k items, so PostgreSQL planned the prepared search again on every request:
    # with nothing excluded the user is the statement's one parameter.
    def prepared() -> tuple[str, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT parameter_types::text, generic_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                ["%WITH u AS%"],
            )
            (types, count), *others = cursor.fetchall()
        assert not others
        return types, int(count)

    for _ in range(12):  # prepared at the 6th run, then 5 custom plans (PostgreSQL's rule), then generic
        user_recommendations_list(user_external_id="u3", limit=5)
    types, settled = prepared()
    for user in ("u3", "u25", "u3"):
        user_recommendations_list(user_external_id=user, limit=5)

    assert types in ("{text}", '{"character varying"}')
    assert settled >= 1
    assert prepared()[1] == settled + 3


def test_excluded_items_are_skipped_by_both_searches(version):
    kept = user_recommendations_list(user_external_id="u3", limit=5)
    dropped = kept.items[0].id

    fast = user_recommendations_list(user_external_id="u3", limit=5, exclude=(dropped,))
    general = user_recommendations_list(user_external_id="u3", limit=5, exclude=(dropped,), explain=True)

    assert dropped not in [i.id for i in fast.items] and dropped not in [i.id for i in general.items]
    assert (
        [i.id for i in fast.items]
        == [i.id for i in general.items]
        == [i.id for i in kept.items[1:]] + [fast.items[-1].id]
    )
