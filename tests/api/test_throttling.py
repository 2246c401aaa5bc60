"""Per-key rate limits answer 429 with Retry-After and fail open when Redis is unavailable; failed
key attempts are limited per client address before any lookup; rate strings are checked when set."""

from __future__ import annotations

import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from api.throttling import Allowances, throttle_batch
from recsys import redis_store
from recsys.api_keys import api_key_create
from recsys.env import env_rate
from recsys.errors import ValidationFailed
from recsys.models import ApiKey

pytestmark = pytest.mark.django_db


def test_key_over_its_rate_gets_429_with_retry_after(make_client):
    client = make_client("read", rate_limit="3/hour")

    statuses = [client.get("/api/v1/items/x").status_code for _ in range(4)]

    assert statuses == [404, 404, 404, 429]
    response = client.get("/api/v1/items/x")
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 3600


def test_limits_are_per_key(make_client):
    busy = make_client("read", rate_limit="2/hour")
    other = make_client("read", rate_limit="2/hour")
    for _ in range(3):
        busy.get("/api/v1/items/x")

    assert busy.get("/api/v1/items/x").status_code == 429
    assert other.get("/api/v1/items/x").status_code == 404


def test_each_process_claims_a_keys_requests_from_redis_in_batches(make_client, settings):
    settings.RECSYS_THROTTLE_BATCH = 5
    client = make_client("read", rate_limit="1000/hour")  # 1% of the limit is 10: batches of 5

    for _ in range(6):
        assert client.get("/api/v1/items/x").status_code == 404

    (counter,) = redis_store.client().keys(redis_store.key("throttle:*"))
    assert int(redis_store.client().get(counter)) == 10  # two claims of 5, not six increments


def test_one_process_claiming_in_batches_serves_exactly_the_limit_then_the_same_429(make_client, settings):
    settings.RECSYS_THROTTLE_BATCH = 2
    client = make_client("read", rate_limit="200/hour")  # batches of 2

    statuses = [client.get("/api/v1/items/x").status_code for _ in range(201)]

    assert statuses == [404] * 200 + [429]
    response = client.get("/api/v1/items/x")
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 3600


def test_processes_claiming_in_batches_never_let_more_than_the_limit_through(settings):
    settings.RECSYS_THROTTLE_BATCH = 5
    counter = redis_store.key(f"throttle:test-{uuid.uuid4().hex}")
    processes = [Allowances(), Allowances(), Allowances()]  # each web process has its own

    positions = [processes[n % 3].take(counter, limit=1000, period=3600) for n in range(1100)]

    allowed = [p for p in positions if p <= 1000]
    assert len(allowed) == len(set(allowed))  # no position is handed out twice
    assert 1000 - 3 * 4 <= len(allowed) <= 1000  # at most batch - 1 lost per process
    assert int(redis_store.client().get(counter)) % 5 == 0


def test_a_window_past_its_limit_is_refused_in_process_without_redis(make_client, settings):
    client = make_client("read", rate_limit="2/hour")
    for _ in range(3):
        client.get("/api/v1/items/x")
    (counter,) = redis_store.client().keys(redis_store.key("throttle:*"))

    assert client.get("/api/v1/items/x").status_code == 429
    assert int(redis_store.client().get(counter)) == 3  # the count only grows within a window


def test_small_limits_count_every_request_in_redis():
    assert [throttle_batch(limit) for limit in (3, 99, 100, 250, 10_000, 1_000_000)] == [1, 1, 1, 2, 50, 50]


def test_rate_limiter_fails_open_when_redis_is_down(make_client, redis_down):
    client = make_client("read", rate_limit="1/min")

    assert [client.get("/api/v1/items/x").status_code for _ in range(3)] == [404, 404, 404]


# ---- failed key attempts per client address ---------------------------------------------------


def guess(address: str = "203.0.113.7", key: str = "rsk_guessed-wrong"):
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client.get("/api/v1/items/x")


@pytest.fixture
def five_failures_an_hour(settings):
    # An hour's fixed window: a test's six requests straddle a window's end once in hours, not in minutes.
    settings.RECSYS_AUTH_FAILURE_RATE = "5/hour"


def test_an_address_past_its_failed_key_budget_gets_429_without_a_key_lookup(
    five_failures_an_hour, django_assert_num_queries
):
    assert [guess().status_code for _ in range(5)] == [401] * 5

    with django_assert_num_queries(0):
        response = guess()

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert "invalid API keys" in response.json()["error"]["message"]
    assert 1 <= int(response["Retry-After"]) <= 3600


def test_a_blocked_address_is_refused_even_with_a_valid_key_it_had_not_used(five_failures_an_hour, make_client):
    raw_key = make_client("read").raw_key
    for _ in range(5):
        guess()

    assert guess(key=raw_key).status_code == 429


def test_other_addresses_and_known_clients_are_not_blocked_by_one_guesser(five_failures_an_hour, make_client):
    known = make_client("read")
    assert known.get("/api/v1/items/x", REMOTE_ADDR="203.0.113.7").status_code == 404
    for _ in range(6):
        guess()

    assert guess(address="198.51.100.9").status_code == 401
    assert known.get("/api/v1/items/x", REMOTE_ADDR="203.0.113.7").status_code == 404


def test_failed_keys_are_counted_in_process_while_redis_is_down(five_failures_an_hour, redis_down):
    statuses = [guess().status_code for _ in range(6)]

    assert statuses == [401] * 5 + [429]


def forwarded(client_address: str) -> int:
    client = APIClient(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=f"{client_address}, 10.0.0.9")
    client.credentials(HTTP_AUTHORIZATION="Bearer rsk_guessed-wrong")
    return client.get("/api/v1/items/x").status_code


def test_a_forged_x_forwarded_for_does_not_escape_the_count_without_trusted_proxies(five_failures_an_hour):
    assert [forwarded(f"192.0.2.{n}") for n in range(6)][-1] == 429


def test_behind_trusted_proxies_each_forwarded_client_is_counted_apart(five_failures_an_hour, settings):
    settings.RECSYS_TRUSTED_PROXIES = 2  # the proxy in front appends the peer it saw, 10.0.0.9 ours

    assert [forwarded("192.0.2.1") for _ in range(6)][-1] == 429
    assert forwarded("192.0.2.2") == 401


# ---- rate strings are checked when set, not per request ---------------------------------------


@pytest.mark.parametrize("rate", ["fast", "10/fortnight", "0/min", "-3/min", "3"])
def test_a_key_with_an_invalid_rate_cannot_be_created(rate):
    with pytest.raises(ValidationFailed):
        api_key_create(name="shop", scopes=["read"], rate_limit=rate)


def test_create_api_key_command_refuses_an_invalid_rate():
    with pytest.raises(CommandError, match="rate limit"):
        call_command("create_api_key", "--name", "shop", "--rate-limit", "lots")


def test_the_admin_form_refuses_an_invalid_rate(admin_client):
    response = admin_client.post("/admin/recsys/apikey/add/", {"name": "x", "scopes": "read", "rate_limit": "lots"})

    assert response.status_code == 200 and "rate limit must be" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_an_invalid_default_rate_fails_at_settings_load(monkeypatch):
    monkeypatch.setenv("RECSYS_RATE_LIMIT", "plenty")

    with pytest.raises(ImproperlyConfigured):
        env_rate("RECSYS_RATE_LIMIT", "6000/min")


def test_a_stored_invalid_rate_falls_back_to_the_default_instead_of_failing_requests(make_client):
    client = make_client("read")
    ApiKey.objects.update(rate_limit="lots")  # written around the checks, e.g. by hand in SQL

    assert client.get("/api/v1/items/x").status_code == 404
