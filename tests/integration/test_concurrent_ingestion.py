"""Eight clients, each on its own HTTP connection, send overlapping batches to a live gunicorn at
once: the same events re-sent by several clients, interleaved upserts of the same items with
different fields. Afterwards the tables hold exactly what was sent: no duplicates, no lost rows."""

from __future__ import annotations

import http.client
import json
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from recsys.api_keys import api_key_create
from recsys.models import Interaction, Item, User
from tests.integration.faults import serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLIENTS, ROUNDS, ITEMS, USERS, EVENTS = 8, 12, 60, 50, 3000
TYPES = ("view", "click", "purchase", "rating")


def event_pool(rng: random.Random) -> list[dict[str, object]]:
    """EVENTS distinct (user, item, type, timestamp) events; a rating carries a value."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    pool: dict[tuple[str, str, str, str], dict[str, object]] = {}
    while len(pool) < EVENTS:
        user, item, kind = f"u{rng.randrange(USERS)}", f"i{rng.randrange(ITEMS)}", rng.choice(TYPES)
        stamp = (start + timedelta(minutes=rng.randrange(500))).isoformat()
        event: dict[str, object] = {"user": user, "item": item, "type": kind, "timestamp": stamp}
        if kind == "rating":
            event["value"] = float(rng.randrange(1, 6))
        pool.setdefault((user, item, kind, stamp), event)
    return list(pool.values())


def item_version(item: int, client: int, round_: int) -> dict[str, object]:
    tag = f"{client}-{round_}"
    return {
        "id": f"i{item}",
        "title": f"title {tag}",
        "text": f"text {tag}",
        "categories": [f"client-{client}", f"round-{round_}"],
        "attributes": {"tag": tag},
    }


def client_plan(client: int, pool: list[dict[str, object]], rng: random.Random) -> list[tuple[str, dict]]:
    """Its share of the events plus as many re-sends of others' events, and item upserts, interleaved."""
    own = pool[client::CLIENTS]
    resent = rng.sample(pool, len(own))
    events = own + resent
    rng.shuffle(events)
    size = len(events) // ROUNDS + 1
    plan: list[tuple[str, dict]] = []
    for round_ in range(ROUNDS):
        batch = events[round_ * size : (round_ + 1) * size]
        plan.append(("/api/v1/interactions", {"interactions": batch}))
        items = rng.sample(range(ITEMS), 20) + [n for n in range(ITEMS) if n % CLIENTS == client and round_ == 0]
        plan.append(("/api/v1/items/batch", {"items": [item_version(n, client, round_) for n in set(items)]}))
    return plan


def send(port: str, key: str, plan: list[tuple[str, dict]], replies: list[tuple[int, dict]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for path, body in plan:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        answer = conn.getresponse()
        replies.append((answer.status, json.loads(answer.read())))
    conn.close()


def test_eight_clients_sending_overlapping_batches_store_exactly_what_was_sent(live_env, tmp_path):
    rng = random.Random(6)
    pool = event_pool(rng)
    plans = [client_plan(client, pool, rng) for client in range(CLIENTS)]
    sent_versions = {
        (row["id"], row["attributes"]["tag"]): row
        for plan in plans
        for path, body in plan
        if path.endswith("batch")
        for row in body["items"]
    }
    _, key = api_key_create(name="concurrent", scopes=["read", "write"], rate_limit="1000000/min")
    env = {**live_env, "WEB_CONCURRENCY": "4", "RECSYS_DATA_DIR": str(tmp_path), "RECSYS_CONTENT_ENCODER": "fake"}
    replies: list[list[tuple[int, dict]]] = [[] for _ in range(CLIENTS)]
    with serving(env, tmp_path / "serve.log"):
        threads = [
            threading.Thread(target=send, args=(env["PORT"], key, plan, out))
            for plan, out in zip(plans, replies, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

    answers = [answer for out in replies for answer in out]
    assert len(answers) == CLIENTS * ROUNDS * 2
    assert all(status == 200 and not body["errors"] for status, body in answers), answers
    created = sum(
        body["created"]
        for out, plan in zip(replies, plans, strict=True)
        for (_, body), (path, _) in zip(out, plan, strict=True)
        if path.endswith("interactions")
    )
    assert created == EVENTS, "each event reported created exactly once"

    stored = {
        (user, item, kind, stamp.isoformat()): value
        for user, item, kind, stamp, value in Interaction.objects.values_list(
            "user__external_id", "item__external_id", "event_type", "timestamp", "value"
        )
    }
    expected = {(e["user"], e["item"], e["type"], e["timestamp"]): e.get("value") for e in pool}
    assert Interaction.objects.count() == EVENTS == len(stored)
    assert stored == expected
    assert User.objects.count() == len({e["user"] for e in pool})

    items = list(Item.objects.values("external_id", "title", "text", "categories", "attributes", "is_stub"))
    assert len(items) == ITEMS and not any(row["is_stub"] for row in items)
    for row in items:
        sent = sent_versions.get((row["external_id"], row["attributes"].get("tag")))
        assert sent is not None, f"{row} is none of the versions sent"
        assert (row["title"], row["text"], row["categories"]) == (sent["title"], sent["text"], sent["categories"])
