"""Demo client: simulated users ask for recommendations, report what they were shown as impressions,
and click what they like, all through the REST API, so that the running experiment has numbers.

A simulated user likes the topics (categories) of their own recent history: they click a shown item of
one of their two favourite topics with probability ``--in-topic`` and any other item with ``--off-topic``,
both discounted by position (1 / (1 + 0.15 · position)). A variant that recommends more of a user's
topics therefore earns a higher CTR, which is what the experiment measures.

    python scripts/demo_traffic.py --base http://127.0.0.1:8000 --key KEY --users 600
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import random
import sys
import time
import urllib.error
import urllib.request
from typing import Any


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base.rstrip("/"), key
        self.categories: dict[str, list[str]] = {}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 (the demo's own server, http only)
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        for attempt in range(6):
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (the demo's own server)
                    return json.loads(answer.read())
            except urllib.error.HTTPError as error:  # the key's rate limit, or a busy moment: wait as told
                if error.code not in (429, 503) or attempt == 5:
                    raise
                time.sleep(float(error.headers.get("Retry-After", "1")))
        raise AssertionError("unreachable")

    def item_categories(self, item: str) -> list[str]:
        if item not in self.categories:
            self.categories[item] = self.call("GET", f"/api/v1/items/{item}").get("categories", [])
        return self.categories[item]


def favourite_topics(api: Api, user: str) -> set[str]:
    history = api.call("GET", f"/api/v1/users/{user}/interactions?limit=30")["interactions"]
    counts = collections.Counter(c for event in history for c in api.item_categories(event["item"]))
    return {topic for topic, _ in counts.most_common(2)}


def visit(api: Api, user: str, rng: random.Random, args: argparse.Namespace) -> tuple[str, int, int]:
    """One visit: recommendations, the impression of what was shown, the clicks. (variant, shown, clicked)"""
    topics = favourite_topics(api, user)
    answer = api.call("GET", f"/api/v1/users/{user}/recommendations?limit={args.limit}")
    shown = [item["id"] for item in answer["items"]]
    recommendation_id = answer["recommendation_id"]
    api.call(
        "POST",
        "/api/v1/impressions",
        {"impressions": [{"recommendation_id": recommendation_id, "user": user, "items": shown}]},
    )
    clicks = []
    for position, item in enumerate(shown):
        liked = bool(topics & set(api.item_categories(item)))
        chance = (args.in_topic if liked else args.off_topic) / (1 + 0.15 * position)
        if rng.random() < chance:
            clicks.append({"user": user, "item": item, "type": "click", "recommendation_id": recommendation_id})
    if clicks:
        api.call("POST", "/api/v1/interactions", {"interactions": clicks})
    variant = (answer.get("experiment") or {}).get("variant") or "(no experiment)"
    return variant, len(shown), len(clicks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--in-topic", type=float, default=0.25)
    parser.add_argument("--off-topic", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=6)
    args = parser.parse_args()
    api = Api(args.base, args.key)
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])

    def one(k: int) -> tuple[str, int, int]:
        # A generator per user: the clicks do not depend on which thread served whom.
        return visit(api, f"user-{k + 1:06d}", random.Random(args.seed * 1_000_003 + k), args)

    # Several visits at once (the server has several workers); item categories are shared.
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for variant, shown, clicked in pool.map(one, range(args.users)):
            row = totals[variant]
            row[0], row[1], row[2] = row[0] + 1, row[1] + shown, row[2] + clicked
    for variant, (users, shown, clicked) in sorted(totals.items()):
        print(f"{variant}: {users} users, {shown} impressions, {clicked} clicks (CTR {clicked / max(shown, 1):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
