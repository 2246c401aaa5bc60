"""The penalty box: a caller answered 429 on a path is answered 429 there, before any database or
Redis work, until its Retry-After has passed; so is one whose malformed requests to a path pass
RECSYS_MALFORMED_REQUEST_RATE, until the rate's window ends. Other keys and paths go on."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from api import limits
from api.limits import slot_acquire, slot_release
from recsys import redis_store
from recsys.api_keys import hash_key
from recsys.models import ApiKey
from recsys.services import items_upsert
from tests.factories import FakeClock

pytestmark = pytest.mark.django_db
NEGATIONS = " ".join(["-red"] * 100)


@pytest.fixture
def shoes(db):
    items_upsert(rows=[{"id": "shoe0", "title": "red running shoes"}])


@pytest.fixture
def one_at_a_time(settings):
    settings.RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY = 1
    settings.RECSYS_EXPENSIVE_CONCURRENCY_TOTAL = 2


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(limits.time, "monotonic", clock)
    return clock


def search(client, query: str = "shoes"):
    return client.get(f"/api/v1/search?q={quote(query)}&mode=keyword")


def key_of(client) -> ApiKey:
    return ApiKey.objects.get(key_hash=hash_key(client.raw_key))


def refused_once(client) -> None:
    held = slot_acquire(key_id=key_of(client).pk)
    assert search(client).status_code == 429
    slot_release(slot=held)


def test_a_caller_refused_with_429_is_refused_again_without_database_or_redis(
    reader, shoes, one_at_a_time, clock, django_assert_num_queries, monkeypatch
):
    refused_once(reader)
    monkeypatch.setattr(redis_store, "run", lambda operation: pytest.fail("Redis was asked"))

    with django_assert_num_queries(0):
        response = search(reader)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response["Retry-After"] == "1"


def test_the_box_opens_once_retry_after_has_passed(reader, shoes, one_at_a_time, clock):
    refused_once(reader)

    clock.now += 0.9
    assert search(reader).status_code == 429
    clock.now += 0.2
    assert search(reader).status_code == 200


def test_other_keys_and_other_paths_are_not_boxed(reader, make_client, shoes, one_at_a_time, clock):
    refused_once(reader)

    assert reader.get("/api/v1/items/shoe0").status_code == 200
    assert search(make_client("read")).status_code == 200


def test_a_key_over_its_rate_is_boxed_for_at_most_a_minute(make_client, clock):
    client = make_client("read", rate_limit="2/hour")
    assert [client.get("/api/v1/items/x").status_code for _ in range(3)] == [404, 404, 429]

    refused = int(client.get("/api/v1/items/x")["Retry-After"])  # DRF's, the hour's remainder (boxed)
    clock.now += 30

    boxed = client.get("/api/v1/items/x")

    # The box's answer says the refusal's own Retry-After, counted down (before: at most 60 s, so a
    # client that obeyed it asked again every minute of the hour)
    assert boxed.status_code == 429 and int(boxed["Retry-After"]) == refused - 30 > 60
    clock.now += 30.1
    assert client.get("/api/v1/items/x").status_code == 429  # asked again: still over its hourly rate


def test_a_flood_of_malformed_requests_is_boxed_until_the_window_ends(reader, make_client, shoes, settings):
    settings.RECSYS_MALFORMED_REQUEST_RATE = "3/hour"  # a fixed window these requests never straddle in practice

    statuses = [search(reader, NEGATIONS).status_code for _ in range(4)]

    assert statuses == [400, 400, 400, 429]
    boxed = search(reader)  # a valid query from the same key, on the same path
    assert boxed.status_code == 429 and 1 <= int(boxed["Retry-After"]) <= 3600
    assert reader.get("/api/v1/items/shoe0").status_code == 200
    assert search(make_client("read")).status_code == 200


def test_a_malformed_search_is_refused_without_taking_a_slot(reader, shoes, one_at_a_time):
    held = slot_acquire(key_id=key_of(reader).pk)

    response = search(reader, NEGATIONS)

    assert response.status_code == 400  # not 429: the query was checked before the slot
    assert "word" in response.json()["error"]["message"]
    slot_release(slot=held)


def test_without_the_box_every_request_is_answered_afresh(reader, shoes, one_at_a_time, settings):
    settings.RECSYS_PENALTY_BOX = False
    refused_once(reader)

    assert search(reader).status_code == 200


def test_unauthenticated_requests_are_never_boxed():
    from rest_framework.test import APIClient

    assert [APIClient().get("/api/v1/items/x").status_code for _ in range(3)] == [401] * 3


def test_a_shared_key_is_boxed_only_at_the_address_that_was_refused(make_client, clock):
    client = make_client("read", rate_limit="2/hour")
    for _ in range(3):
        client.get("/api/v1/items/x", REMOTE_ADDR="192.0.2.1")

    with_the_box = client.get("/api/v1/items/x", REMOTE_ADDR="192.0.2.1")
    elsewhere = client.get("/api/v1/items/x", REMOTE_ADDR="192.0.2.2")

    assert with_the_box.status_code == elsewhere.status_code == 429  # the key is over its rate either way
    assert "moments ago" in with_the_box.json()["error"]["message"]
    assert "moments ago" not in elsewhere.json()["error"]["message"]


def test_a_boxed_refusal_is_not_logged_again(reader, shoes, one_at_a_time, clock, caplog):
    refused_once(reader)  # Django logs that 429 ("Too Many Requests")
    caplog.clear()

    for _ in range(3):
        assert search(reader).status_code == 429

    assert [r for r in caplog.records if r.name == "django.request"] == []
