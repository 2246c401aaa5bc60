"""Expensive requests are bounded: keyword queries past the word and operator limits are 400, and
concurrent expensive requests past the per-key or global limit are 429 with Retry-After."""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import quote

import pytest

from api import limits
from api.limits import ExpensiveRequestsLimited, penalty_box, slot_acquire, slot_release
from recsys import redis_store
from recsys.api_keys import hash_key
from recsys.models import ApiKey
from recsys.services import items_upsert
from tests.factories import FakeClock

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


# ---- the time budget: seconds of expensive work per second, per key and in total ----------------


@pytest.fixture
def budget(settings):
    """A budget that a request held for half a second overdraws: 0.01 s of burst, draining at
    0.1 s per second per key and 1 s per second in total (tests change either)."""
    settings.RECSYS_EXPENSIVE_SHARE_PER_KEY = 0.1
    settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 1.0
    settings.RECSYS_EXPENSIVE_BURST_SECONDS = 0.01


def held_for(seconds: float, client) -> None:
    """An expensive request of ``client``'s key that held its slot this long."""
    slot = slot_acquire(key_id=key_of(client).pk)
    slot_release(slot=replace(slot, started=slot.started - seconds))


@pytest.mark.parametrize("redis", ["up", "down"])
def test_a_key_that_spent_its_time_budget_waits_until_it_drains(request, make_client, shoes, budget, redis, settings):
    settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 100.0  # all keys' debt of 0.5 s drains in 5 ms
    if redis == "down":
        request.getfixturevalue("redis_down")
    spender, other = make_client("read"), make_client("read")
    held_for(0.5, spender)

    refused = search(spender, "shoes")

    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    assert "of this API key have used their time budget (0.1 s per second)" in message
    assert 4 <= int(refused["Retry-After"]) <= 5  # (0.5 - 0.01) / 0.1 s
    assert search(other, "shoes").status_code == 200  # the global budget had room


def test_all_keys_together_have_a_time_budget(make_client, shoes, budget, settings):
    settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 0.2
    first, second = make_client("read"), make_client("read")
    held_for(0.3, first)

    refused = search(second, "shoes")

    assert refused.status_code == 429
    assert "all API keys together" in refused.json()["error"]["message"]
    assert int(refused["Retry-After"]) == 2  # ceil((0.3 - 0.01) / 0.2)


def test_a_spent_budget_drains_at_its_rate(reader, shoes, budget, settings):
    settings.RECSYS_EXPENSIVE_SHARE_PER_KEY = settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 10.0
    held_for(0.5, reader)  # 0.49 s over: drained in 49 ms
    with pytest.raises(ExpensiveRequestsLimited):
        slot_acquire(key_id=key_of(reader).pk)

    time.sleep(0.1)

    slot_release(slot=slot_acquire(key_id=key_of(reader).pk))


def test_no_budget_when_its_rate_is_zero(reader, shoes, budget, settings):
    settings.RECSYS_EXPENSIVE_SHARE_PER_KEY = settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 0.0
    held_for(100.0, reader)

    assert search(reader, "shoes").status_code == 200


# ---- a budget Redis said is spent is refused in this process until it drains, without Redis ----


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(limits.time, "monotonic", clock)
    return clock


@pytest.fixture
def redis_asked(monkeypatch) -> list[int]:
    """Counts the expensive-request limits' round trips to Redis (and still makes them)."""
    asked: list[int] = []
    run = redis_store.run

    def counted(operation):
        asked.append(1)
        return run(operation)

    monkeypatch.setattr(redis_store, "run", counted)
    return asked


def refusal(client) -> ExpensiveRequestsLimited:
    with pytest.raises(ExpensiveRequestsLimited) as refused:
        slot_acquire(key_id=key_of(client).pk)
    return refused.value


def test_a_key_past_its_budget_is_refused_again_without_redis_until_it_drains(
    reader, shoes, budget, settings, clock, redis_asked
):
    settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 100.0
    held_for(0.5, reader)  # the key owes 0.49 s past its burst: 4.9 s at 0.1 s per second
    assert refusal(reader).wait == pytest.approx(4.9, abs=0.01)
    redis_asked.clear()

    clock.now += 3.0
    again = refusal(reader)

    assert redis_asked == []
    assert again.wait == pytest.approx(1.9, abs=0.01)  # Retry-After counts down: ceil(1.9) = 2
    assert "of this API key have used their time budget" in str(again.detail)
    clock.now += 2.0
    refusal(reader)  # Redis's own clock has not moved: it still refuses, but was asked
    assert redis_asked == [1]


def test_one_keys_spent_budget_does_not_refuse_other_keys(make_client, shoes, budget, settings, clock, redis_asked):
    # No global budget: at 100 s per second the spender's 0.5 s still overdrew it for the first
    # 4.9 ms, and a fast machine asked for the other key's slot within them (a flaky refusal).
    settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 0.0
    spender, other = make_client("read"), make_client("read")
    held_for(0.5, spender)
    refusal(spender)

    slot_release(slot=slot_acquire(key_id=key_of(other).pk))

    assert search(other, "shoes").status_code == 200


def test_a_spent_global_budget_refuses_every_key_without_redis_until_it_drains(
    make_client, shoes, budget, settings, clock, redis_asked
):
    settings.RECSYS_EXPENSIVE_SHARE_PER_KEY = 100.0
    settings.RECSYS_EXPENSIVE_SHARE_TOTAL = 0.2
    first, second, third = make_client("read"), make_client("read"), make_client("read")
    held_for(0.3, first)
    assert "all API keys together" in str(refusal(second).detail)
    redis_asked.clear()

    clock.now += 1.0
    refusal(third)
    assert redis_asked == []
    refused = search(third, "shoes")

    assert refused.status_code == 429 and "all API keys together" in refused.json()["error"]["message"]
    assert refused["Retry-After"] == "1"  # 0.45 s left; never under a second
    redis_asked.clear()
    clock.now += 0.5
    refusal(third)
    assert redis_asked == [1]


def test_full_slots_are_asked_again_each_time(reader, shoes, one_at_a_time, redis_asked):
    held = slot_acquire(key_id=key_of(reader).pk)
    refusal(reader)
    redis_asked.clear()

    slot_release(slot=held)

    slot_release(slot=slot_acquire(key_id=key_of(reader).pk))  # the slot freed: admitted at once
    assert len(redis_asked) == 3  # the release, the acquisition, its release
