"""Hot answers are cached in Redis and go stale on the user's interactions, catalogue changes and
model switches; without Redis the API answers uncached."""

from __future__ import annotations

import pytest
from psycopg import sql

from embeddings import answer_cache, runs, services
from embeddings.learners import LearnerParams
from embeddings.recommendations import Answer, Recommendation
from recsys.services import interactions_ingest, item_delete, items_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(communities, settings):
    settings.RECSYS_CF_TUNE = False
    items_upsert(rows=[{"id": f"i{n}", "categories": ["first" if n < 15 else "second"]} for n in range(30)])
    version = services.collaborative_version_create(
        params=LearnerParams(algorithm="als", factors=8, iterations=10, regularization=0.05)
    )
    return services.collaborative_model_train(version_id=version.pk)


def recommend(client, user: str) -> dict:
    """The answer without its recommendation id, which is new for every response, cached or not."""
    response = client.get(f"/api/v1/users/{user}/recommendations?limit=5")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body.pop("recommendation_id")
    return body


def scramble_user_vector(version, user: str) -> None:
    """Change what serving would compute without going through a service (so nothing invalidates)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "UPDATE {} SET embedding = (SELECT embedding FROM {} ORDER BY user_id DESC LIMIT 1) "
                "WHERE user_id = (SELECT id FROM recsys_user WHERE external_id = %s)"
            )
            .format(sql.Identifier(version.user_table), sql.Identifier(version.user_table))
            .as_string(connection.connection),
            [user],
        )


def test_repeated_request_is_answered_from_the_cache(reader, trained):
    first = recommend(reader, "u3")
    scramble_user_vector(trained, "u3")  # u3 now looks like u39, but nothing told the cache

    assert recommend(reader, "u3") == first


def test_new_interactions_of_the_user_make_their_answer_stale(reader, trained, django_capture_on_commit_callbacks):
    first = recommend(reader, "u3")
    with django_capture_on_commit_callbacks(execute=True):
        interactions_ingest(rows=[{"user": "u3", "item": first["items"][0]["id"], "type": "purchase"}])

    second = recommend(reader, "u3")

    assert first["items"][0]["id"] not in {item["id"] for item in second["items"]}


def test_other_users_interactions_leave_an_answer_cached(reader, trained, django_capture_on_commit_callbacks):
    first = recommend(reader, "u3")
    scramble_user_vector(trained, "u3")
    with django_capture_on_commit_callbacks(execute=True):
        interactions_ingest(rows=[{"user": "u30", "item": "i20", "type": "purchase"}])

    assert recommend(reader, "u3") == first


def test_catalogue_change_makes_every_answer_stale(reader, trained, django_capture_on_commit_callbacks):
    first = recommend(reader, "u3")
    with django_capture_on_commit_callbacks(execute=True):
        item_delete(external_id=first["items"][0]["id"])

    second = recommend(reader, "u3")

    assert first["items"][0]["id"] not in {item["id"] for item in second["items"]}


def test_model_switch_makes_every_answer_stale(reader, trained, django_capture_on_commit_callbacks):
    assert recommend(reader, "u3")["model"]["version"] == trained.pk
    with django_capture_on_commit_callbacks(execute=True):
        newer = services.collaborative_version_create(
            params=LearnerParams(algorithm="als", factors=4, iterations=5, regularization=0.05)
        )
        services.collaborative_model_train(version_id=newer.pk)
        runs.model_version_activate(version_id=newer.pk)

    assert recommend(reader, "u3")["model"]["version"] == newer.pk


def test_similar_items_are_cached_per_item_and_parameters(reader, trained):
    first = reader.get("/api/v1/items/i3/similar?limit=4").json()
    other = reader.get("/api/v1/items/i3/similar?limit=2").json()

    assert len(first["items"]) == 4 and len(other["items"]) == 2
    again = reader.get("/api/v1/items/i3/similar?limit=4").json()
    assert again.pop("recommendation_id") != first.pop("recommendation_id")  # minted per response
    assert again == first


def test_api_answers_uncached_when_redis_is_down(reader, trained, redis_down):
    first = recommend(reader, "u3")
    scramble_user_vector(trained, "u3")

    second = recommend(reader, "u3")

    assert first["strategy"] == second["strategy"] == "collaborative"
    assert second != first  # computed afresh from the changed vector


def test_answer_computed_while_data_changed_is_never_served(settings, django_capture_on_commit_callbacks):
    calls = []

    def compute() -> Answer:
        calls.append(1)
        if len(calls) == 1:  # the user's data changes while their answer is being computed
            with django_capture_on_commit_callbacks(execute=True):
                answer_cache.answers_invalidate(owners=["user:racer"])
        return Answer([Recommendation("i1", 1.0)], None, "popular")

    def ask() -> Answer:
        return answer_cache.answer_cached(
            owner="user:racer",
            variant="v",
            compute=compute,
            decode=lambda d: Answer([Recommendation(**i) for i in d["items"]], d["model"], d["strategy"]),
        )

    ask()
    ask()
    ask()

    assert len(calls) == 2  # the first answer was stored under the old token and never served


def test_an_answer_is_not_served_past_its_age_limit_though_other_writes_kept_its_hash(settings, monkeypatch):
    # Given an answer cached 10 s ago, when an invalidation of its user was lost (Redis away then),
    # and the user's other variants written since, each renewing the hash's expiry
    settings.RECSYS_ANSWER_CACHE_SECONDS = 5
    calls = []
    clock = [1_000_000.0]
    monkeypatch.setattr(answer_cache.time, "time", lambda: clock[0])

    def ask(variant: str) -> Answer:
        return answer_cache.answer_cached(
            owner="user:ageing",
            variant=variant,
            compute=lambda: calls.append(variant) or Answer([Recommendation("i1", 1.0)], None, "popular"),
            decode=lambda d: Answer([Recommendation(**i) for i in d["items"]], d["model"], d["strategy"]),
        )

    ask("a")
    ask("a")
    clock[0] += 4
    ask("b")
    clock[0] += 6

    # Then it is computed again
    ask("a")
    assert calls == ["a", "b", "a"]


def test_an_owners_answers_stay_bounded_however_many_variants_are_asked(settings):
    # Given a caller asking one item's similar items with a new filter text on every request
    from recsys import redis_store

    settings.RECSYS_ANSWER_CACHE_SECONDS = 300
    calls = []

    def ask(variant: str) -> None:
        answer_cache.answer_cached(
            owner="item:hot",
            variant=variant,
            compute=lambda: calls.append(variant) or Answer([Recommendation("i1", 1.0)], None, "popular"),
            decode=lambda d: Answer([Recommendation(**i) for i in d["items"]], d["model"], d["strategy"]),
        )

    for n in range(answer_cache.MAX_VARIANTS * 3):
        ask(f'filter=title != "{n:04d}{"x" * 2000}"')
    ask("plain")
    ask("plain")

    # Then the owner's hash holds at most MAX_VARIANTS small fields (it grew by one 2 KB field a request),
    # and a variant asked again is still answered from the cache
    key = redis_store.key("answers:item:hot")
    fields = redis_store.run(lambda client: client.hkeys(key))
    assert 0 < len(fields) <= answer_cache.MAX_VARIANTS and all(len(f) == 32 for f in fields)
    assert calls.count("plain") == 1


def test_a_batch_renews_each_of_its_users_tokens_with_an_expiry_and_the_global_token_never_expires(
    settings, django_capture_on_commit_callbacks
):
    from recsys import redis_store

    settings.RECSYS_ANSWER_CACHE_SECONDS = 300
    owners = [f"user:u{n}" for n in range(2_000)]
    keys = redis_store.keys(f"answers-token:{owner}" for owner in owners)
    redis = redis_store.client("cache")
    with django_capture_on_commit_callbacks(execute=True):
        answer_cache.answers_invalidate(owners=owners)
    first = redis.mget(keys)

    with django_capture_on_commit_callbacks(execute=True):
        answer_cache.answers_invalidate(owners=owners[:1_500])
    second = redis.mget(keys)

    assert all(first)
    assert all(old != new for old, new in zip(first[:1_500], second[:1_500], strict=True))
    assert first[1_500:] == second[1_500:]
    assert {0 < redis.ttl(key) <= 360 for key in (keys[0], keys[-1])} == {True}
    with django_capture_on_commit_callbacks(execute=True):
        answer_cache.answers_invalidate_all()
    assert redis.get(redis_store.key(answer_cache.GLOBAL)) and redis.ttl(redis_store.key(answer_cache.GLOBAL)) == -1


def test_with_read_replicas_the_global_token_is_renewed_again_once_they_may_have_replayed(
    settings, django_capture_on_commit_callbacks
):
    import threading
    import time

    from recsys import redis_store

    settings.DATABASE_REPLICA_URLS = ["postgresql://replica/recsys"]
    settings.RECSYS_READ_YOUR_WRITES_SECONDS = 0.3
    redis, key = redis_store.client("cache"), redis_store.key(answer_cache.GLOBAL)

    with django_capture_on_commit_callbacks(execute=True):
        answer_cache.answers_invalidate_all()
    first = redis.get(key)
    threads = threading.active_count()
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(20):  # a burst of catalogue changes: one pending renewal, pushed back
            answer_cache.answers_invalidate_all()
    assert threading.active_count() <= threads
    second = redis.get(key)
    deadline = time.monotonic() + 5
    while redis.get(key) == second and time.monotonic() < deadline:
        time.sleep(0.05)

    assert first and redis.get(key) not in (first, second)  # an answer cached from a lagging replica goes stale too
