"""Expensive requests are bounded: keyword queries past the word and operator limits are 400, and
concurrent expensive requests past the per-key or global limit are 429 with Retry-After."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from api.limits import penalty_box, slot_acquire, slot_release
from recsys.api_keys import hash_key
from recsys.models import ApiKey
from recsys.services import items_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def shoes(db):
    items_upsert(
        rows=[{"id": f"shoe{n}", "title": f"{colour} running shoes"} for n, colour in enumerate(["red", "blue"])]
    )


@pytest.fixture
def one_at_a_time(settings):
    settings.RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY = 1
    settings.RECSYS_EXPENSIVE_CONCURRENCY_TOTAL = 2


def search(client, query: str, mode: str = "keyword"):
    return client.get(f"/api/v1/search?q={quote(query)}&mode={mode}")


def key_of(client) -> ApiKey:
    return ApiKey.objects.get(key_hash=hash_key(client.raw_key))


def test_the_negation_attack_is_refused_before_it_scans_anything(reader):
    response = search(reader, " ".join(["-red"] * 100))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "at least one word to look for" in response.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_too_many_words_or_operators_are_400_with_the_limit_named(reader, settings, mode):
    settings.RECSYS_SEARCH_MAX_TERMS = 4
    settings.RECSYS_SEARCH_MAX_OPERATORS = 2

    words = search(reader, "a b c d e", mode).json()["error"]
    operators = search(reader, "shoes -a -b -c", mode).json()["error"]

    assert "at most 4" in words["message"] and words["details"] == {"q": ["at most 4 words"]}
    assert "at most 2" in operators["message"]


def test_a_stop_word_does_not_make_a_negation_searchable(reader, shoes):
    response = search(reader, "the -red")

    assert response.status_code == 400
    assert "stop word" in response.json()["error"]["message"]


def test_an_or_branch_of_negations_only_is_refused(reader, shoes):
    assert search(reader, "shoes or -red").status_code == 400


def test_repeated_negations_collapse_and_the_search_still_answers(reader, shoes):
    body = search(reader, "shoes " + " ".join(["-red"] * 60)).json()

    assert [item["id"] for item in body["items"]] == ["shoe1"]


def test_a_query_of_stop_words_finds_nothing(reader, shoes):
    assert search(reader, "the and").json()["items"] == []


def test_semantic_search_is_not_held_to_keyword_operators(reader, settings):
    settings.RECSYS_SEARCH_MAX_TERMS = 2

    assert search(reader, "a long question in plain words", "semantic").status_code == 409  # no model, no 400


def test_a_key_past_its_concurrent_expensive_requests_gets_429_with_retry_after(reader, shoes, one_at_a_time):
    in_flight = slot_acquire(key_id=key_of(reader).pk)

    response = search(reader, "shoes")

    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "rate_limited"
    assert "at most 1 expensive requests" in response.json()["error"]["message"]
    slot_release(slot=in_flight)
    penalty_box.clear()  # its Retry-After has passed (tests/api/test_penalty_box.py)
    assert search(reader, "shoes").status_code == 200


def test_all_keys_together_are_limited_too(make_client, shoes, one_at_a_time):
    busy = [make_client("read") for _ in range(3)]
    held = [slot_acquire(key_id=key_of(client).pk) for client in busy[:2]]

    response = search(busy[2], "shoes")

    assert response.status_code == 429 and "all API keys together" in response.json()["error"]["message"]
    for slot in held:
        slot_release(slot=slot)


def test_cheap_requests_are_not_limited_while_expensive_ones_are_full(reader, shoes, one_at_a_time):
    held = slot_acquire(key_id=key_of(reader).pk)

    assert reader.get("/api/v1/items/shoe0").status_code == 200
    assert reader.get("/api/v1/items/popular").status_code == 200
    assert reader.get("/api/v1/items/popular?window=30d").status_code == 429  # counted on demand
    slot_release(slot=held)


def test_each_request_frees_its_slot_when_it_ends(reader, shoes, one_at_a_time):
    statuses = [search(reader, "shoes").status_code for _ in range(3)] + [search(reader, "-red").status_code]

    assert statuses == [200, 200, 200, 400]
    assert search(reader, "shoes").status_code == 200  # the refused one freed its slot too


def test_the_limit_holds_in_each_process_while_redis_is_down(reader, shoes, one_at_a_time, redis_down):
    held = slot_acquire(key_id=key_of(reader).pk)

    assert search(reader, "shoes").status_code == 429
    slot_release(slot=held)
    penalty_box.clear()  # its Retry-After has passed
    assert search(reader, "shoes").status_code == 200


def test_a_broad_keyword_query_ranks_at_most_the_configured_matches(reader, shoes, settings):
    settings.RECSYS_SEARCH_MAX_RANKED = 1

    assert len(search(reader, "shoes").json()["items"]) == 1
