"""Popular items: one user's outliers cannot carry an item, and scores mean the same in every window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from embeddings.popularity import popularity_refresh
from recsys.models import Interaction, Item, User
from recsys.services import interactions_ingest

pytestmark = pytest.mark.django_db


def at(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()


def organic_catalogue(*, days_ago: float = 0.1) -> None:
    """item-n bought by n + 2 distinct users."""
    rows = [
        {"user": f"buyer{n}-{u}", "item": f"item-{n}", "type": "purchase", "timestamp": at(days_ago)}
        for n in range(5)
        for u in range(n + 2)
    ]
    assert not interactions_ingest(rows=rows).errors


def popular(client, **params):
    query = "&".join(f"{k}={v}" for k, v in {"limit": 10, **params}.items())
    response = client.get(f"/api/v1/items/popular?{query}")
    assert response.status_code == 200, response.content
    return [(item["id"], item["score"]) for item in response.json()["items"]]


@pytest.mark.parametrize("window", [None, "30d"])  # the refreshed table, and a window counted on demand
def test_one_huge_rating_does_not_carry_an_item_up_popular(reader, window):
    organic_catalogue()
    # Stored directly: ingestion may bound rating values, but rows stored before a bound, or under a
    # wide configured range, must not carry an item either.
    Interaction.objects.create(
        user=User.objects.create(external_id="loud"),
        item=Item.objects.create(external_id="outlier"),
        event_type="rating",
        value=1e9,
        weight=1e9,
        timestamp=datetime.now(UTC) - timedelta(days=0.1),
    )
    popularity_refresh()

    ranked = popular(reader, **({"window": window} if window else {}))

    ids = [item for item, _ in ranked]
    assert ids[:5] == ["item-4", "item-3", "item-2", "item-1", "item-0"]
    assert ids[5] == "outlier" and ranked[5][1] < ranked[0][1] / 4


def test_a_thousand_views_by_one_user_weigh_less_than_three_buyers(reader):
    organic_catalogue()
    views = [{"user": "bot", "item": "viewed", "type": "view", "timestamp": at(n / 10_000)} for n in range(1000)]
    assert not interactions_ingest(rows=views).errors
    popularity_refresh()

    ids = [item for item, _ in popular(reader)]

    assert ids.index("viewed") > ids.index("item-1")  # item-1 has three buyers


@pytest.mark.parametrize("window", [None, "1d", "7d", "30d", "365d"])
def test_scores_are_percent_shares_of_the_window_in_every_window(reader, window):
    for days_ago in (0.2, 3, 20):  # the same activity in each period: raw decayed sums would differ
        for n in range(3):
            rows = [
                {"user": f"u{days_ago}-{n}-{u}", "item": f"item-{n}", "type": "click", "timestamp": at(days_ago)}
                for u in range(n + 1)
            ]
            assert not interactions_ingest(rows=rows).errors
    popularity_refresh()

    ranked = popular(reader, **({"window": window} if window else {}))

    assert [item for item, _ in ranked] == ["item-2", "item-1", "item-0"]
    assert sum(score for _, score in ranked) == pytest.approx(100, abs=1e-3)
    assert ranked[0][1] == pytest.approx(50, abs=1e-3)  # 3 of 6 users each period, whatever the decay


@pytest.mark.parametrize("window", [None, "30d"])
@pytest.mark.parametrize("change", ["hide", "delete", "recategorise"])
def test_an_item_hidden_deleted_or_moved_leaves_the_cached_popular_lists_at_once(
    reader, writer, window, change, django_capture_on_commit_callbacks
):
    # Given popular lists cached (a minute) with item-4 first, overall and in its category
    organic_catalogue()
    assert writer.put("/api/v1/items/item-4", {"categories": ["lamps"]}, format="json").status_code == 200
    popularity_refresh()
    params = {"window": window} if window else {}
    assert popular(reader, **params)[0][0] == popular(reader, category="lamps", **params)[0][0] == "item-4"

    # When it is hidden, deleted or moved to another category (they served it for up to 60 s:
    # the probe of 2026-12-04)
    with django_capture_on_commit_callbacks(execute=True):
        if change == "hide":
            writer.put("/api/v1/items/item-4", {"is_hidden": True}, format="json")
        elif change == "delete":
            writer.delete("/api/v1/items/item-4")
        else:
            writer.put("/api/v1/items/item-4", {"categories": ["chairs"]}, format="json")

    # Then no popular list offers it where it no longer belongs
    assert "item-4" not in {item for item, _ in popular(reader, category="lamps", **params)}
    if change != "recategorise":
        assert "item-4" not in {item for item, _ in popular(reader, **params)}


def test_a_catalogue_change_moves_the_generation_whatever_the_read_your_writes_time(settings):
    # Redis takes a whole number of seconds: with RECSYS_READ_YOUR_WRITES_SECONDS above 30 the expiry was a
    # float, Redis refused the bump, and hidden items stayed in the cached popular lists (before)
    from embeddings import popularity
    from recsys import redis_store

    settings.RECSYS_READ_YOUR_WRITES_SECONDS = 31.5
    client = redis_store.client("cache")
    before = int(client.get(redis_store.key(popularity.GENERATION)) or 0)

    popularity._generation_next()

    assert int(client.get(redis_store.key(popularity.GENERATION)) or 0) == before + 1
    assert client.ttl(redis_store.key(popularity.CHANGED_AT)) >= 63
