"""Per-key rate limits answer 429 with Retry-After, and fail open when Redis is unavailable."""

from __future__ import annotations

import pytest

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


def test_rate_limiter_fails_open_when_redis_is_down(make_client, redis_down):
    client = make_client("read", rate_limit="1/min")

    assert [client.get("/api/v1/items/x").status_code for _ in range(3)] == [404, 404, 404]
