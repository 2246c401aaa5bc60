"""``make demo``: prepare demo data and credentials, serve, and print curl examples that work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from recsys.run import BASE_DIR, PYTHON, log, manage

# Measured with the demo's encoder (all-MiniLM-L6-v2) on the default catalogue (2,000 items and 20
# re-listings): a re-listing and its original score 0.958-0.994 (cosine), while the closest ordinary
# neighbour of any item scores at most 0.943 (p99 0.922). 0.95 (the API's default) separates them.
DUPLICATE_THRESHOLD = 0.95
# The session answer of its two most popular items, checked on the demo's collaborative model, is
# all astronomy (item-000001 and item-000002, the earlier example, mixed history and jazz and got
# finance items back).
SESSION_TOPIC = "astronomy"


def demo_prepare(env: dict[str, str], port: str, serve: Callable[..., int]) -> int:
    manage(env, "migrate", "--no-input", "-v", "0")
    log("loading demo data (synthetic catalog with topics)")
    manage(env, "generate_demo_data", "--no-progress")
    answer = subprocess.run(
        [PYTHON, str(BASE_DIR / "manage.py"), "demo_credentials"],
        env=env,
        cwd=BASE_DIR,
        check=True,
        capture_output=True,
        text=True,
    )
    credentials = json.loads(answer.stdout)

    def on_ready() -> None:
        key = credentials["api_key"]
        train_on_worker(port, key, kind="content")
        train_on_worker(port, key, kind="collaborative")
        train_on_worker(port, key, kind="collaborative")  # a second version to compare in the experiment
        experiment = demo_experiment(port, key)
        if experiment is not None:
            demo_traffic(env, port, key)
            manage(env, "experiment_metrics")  # beat recomputes every minute; the page has numbers now
        print_examples(port, credentials, experiment)

    return serve(env, port, on_ready=on_ready)


def api_call(port: str, key: str, method: str, path: str, body: dict[str, object] | None = None) -> object:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (our own server on loopback)
        return json.loads(answer.read())


def train_on_worker(port: str, key: str, *, kind: str, seconds: float = 600) -> None:
    """Ask the API for a training run of ``kind`` and wait until the worker has activated it."""
    try:
        run = api_call(port, key, "POST", "/api/v1/models/train", {"kind": kind})
    except urllib.error.HTTPError as error:  # 409: the worker is already building one (new items)
        log(f"{kind} training not started: {error.read().decode(errors='replace')}")
        return
    version = run["training_run"]  # type: ignore[index]
    log(f"training {kind} model version {version} on the Celery worker")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        versions = api_call(port, key, "GET", f"/api/v1/models?kind={kind}")
        current = next(v for v in versions if v["version"] == version)  # type: ignore[attr-defined]
        if current["status"] in {"active", "ready", "failed"}:
            metrics = current.get("metrics", {})
            quality = (
                f"NDCG@10 {metrics.get('ndcg@10', 0):.3f} "
                f"(popularity {current.get('baseline_metrics', {}).get('ndcg@10', 0):.3f}), "
                if kind == "collaborative"
                else f"{current.get('counts', {}).get('encoded', 0)} items encoded, "
            )
            log(f"{kind} version {version} is {current['status']}: {quality}timings {current.get('timings')}")
            return
        time.sleep(1)
    log(f"version {version} did not finish within {seconds:.0f} s; see the worker's log")


def demo_experiment(port: str, key: str) -> int | None:
    """An experiment between the active collaborative version and the previous one, with a popularity
    baseline; the running one when the demo runs again on the same data."""
    versions: Any = api_call(port, key, "GET", "/api/v1/models?kind=collaborative")
    servable = [v for v in versions if v["status"] in {"active", "ready"}]
    active = next((v["version"] for v in servable if v["status"] == "active"), None)
    other = next((v["version"] for v in servable if v["version"] != active), None)
    if active is None or other is None:
        log("no experiment: two servable collaborative versions are needed")
        return None
    body: dict[str, object] = {
        "name": f"v{active} against v{other}",
        "control": "active",
        "variants": [
            {"name": "active", "weight": 2, "config": {"model_version": active}},
            {"name": "previous", "weight": 2, "config": {"model_version": other}},
            {"name": "popular", "weight": 1, "config": {"strategy": "popular"}},
        ],
    }
    try:
        created = api_call(port, key, "POST", "/api/v1/experiments", body)
    except urllib.error.HTTPError as error:  # 409: one is running from an earlier demo
        log(f"experiment not created: {error.read().decode(errors='replace')}")
        running: Any = api_call(port, key, "GET", "/api/v1/experiments?status=running")
        return next((e["id"] for e in running if e["scenario"] is None), None)
    log(f"experiment {created['id']} is running: {body['name']}, with a popularity baseline")  # type: ignore[index]
    return int(created["id"])  # type: ignore[index]


def demo_traffic(env: dict[str, str], port: str, key: str) -> None:
    """The demo client (scripts/demo_traffic.py): users see recommendations, impressions and clicks are sent."""
    log("demo client: 600 users see recommendations and click what matches their tastes")
    command = [PYTHON, str(BASE_DIR / "scripts" / "demo_traffic.py"), "--base", f"http://127.0.0.1:{port}"]
    subprocess.run([*command, "--key", key, "--users", "600"], env=env, cwd=BASE_DIR, check=False)


def session_items(port: str, key: str, topic: str = SESSION_TOPIC) -> list[str]:
    """The two most popular items of one topic: a session someone browsing that topic would have."""
    try:
        answer = api_call(port, key, "GET", f"/api/v1/items/popular?category={topic}&limit=2")
    except urllib.error.URLError as error:  # the examples still print; this one names no items
        log(f"could not pick the session example's items: {error}")
        return []
    return [item["id"] for item in answer["items"]]  # type: ignore[index]


def print_examples(port: str, credentials: dict[str, str], experiment: int | None = None) -> None:
    base = f"http://127.0.0.1:{port}"
    session = json.dumps({"items": session_items(port, credentials["api_key"]), "limit": 5})
    auth = f'-H "Authorization: Bearer {credentials["api_key"]}"'
    json_type = '-H "Content-Type: application/json"'
    examples = [
        ("Health (no key needed): database, redis, active models", f"curl -s {base}/api/v1/health"),
        ("Model versions with offline metrics (admin scope)", f"curl -s {auth} {base}/api/v1/models"),
        (
            "Personalised recommendations, with the reasons",
            f'curl -s {auth} "{base}/api/v1/users/user-000001/recommendations?limit=5&explain=true"',
        ),
        ("Items similar to one item", f'curl -s {auth} "{base}/api/v1/items/item-000001/similar?limit=5"'),
        (
            "Similar by text (content) and blended (hybrid)",
            f'curl -s {auth} "{base}/api/v1/items/item-000001/similar?space=content&limit=5"\n'
            f'curl -s {auth} "{base}/api/v1/items/item-000001/similar?space=hybrid&limit=5"',
        ),
        (
            "Search by meaning, by words, or both (default)",
            f'curl -s {auth} "{base}/api/v1/search?q=stargazing+with+a+telescope&mode=semantic&limit=5"\n'
            f'curl -s {auth} "{base}/api/v1/search?q=telescope&mode=keyword&limit=5"\n'
            f'curl -s {auth} "{base}/api/v1/search?q=telescope+for+beginners&limit=5"',
        ),
        (
            f"Near-duplicates: the same product re-listed under an edited title (cosine ≥ {DUPLICATE_THRESHOLD}; "
            "ordinary neighbours of the same topic stay below it)",
            f'curl -s {auth} "{base}/api/v1/items/item-000001/duplicates?threshold={DUPLICATE_THRESHOLD}"',
        ),
        (
            f"Session recommendations from items just viewed (two {SESSION_TOPIC} items)",
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/recommendations -d '{session}'",
        ),
        ("Popular this week", f'curl -s {auth} "{base}/api/v1/items/popular?limit=5&window=7d"'),
        (
            "A cold user gets popular items (strategy says so)",
            f'curl -s {auth} "{base}/api/v1/users/nobody-yet/recommendations?limit=3"',
        ),
        ("Read an item (its vectors per space)", f"curl -s {auth} {base}/api/v1/items/item-000001"),
        ("A user's history, newest first", f'curl -s {auth} "{base}/api/v1/users/user-000001/interactions?limit=5"'),
        (
            "Upsert an item",
            f"curl -s -X PUT {auth} {json_type} {base}/api/v1/items/my-item "
            """-d '{"title": "Trail running shoes", "text": "Light shoes for rocky trails", """
            """"categories": ["outdoor"]}'""",
        ),
        (
            "Bring your own vectors (e.g. image embeddings) and search them",
            f"curl -s -X PUT {auth} {json_type} {base}/api/v1/items/item-000001/vectors/image "
            """-d '{"vector": [0.1, 0.7, 0.2]}'""",
        ),
        (
            "Send interactions (partial success: bad rows are reported by index)",
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/interactions "
            """-d '{"interactions": [{"user": "alice", "item": "my-item", "type": "purchase", """
            """"timestamp": "2026-01-01T12:00:00Z"}, {"user": "alice", "item": "my-item", "type": "teleport"}]}'""",
        ),
    ]
    examples += experiment_examples(base, auth, json_type, experiment, shown_example(port, credentials["api_key"]))
    lines = ["", "=" * 78, f"recsys demo is up on {base}", ""]
    for title, command in examples:
        lines += [f"# {title}", command, ""]
    lines += [
        f"API docs:  {base}/api/docs/",
        f"Admin:     {base}/admin/  (user {credentials['username']!r}, password {credentials['password']!r})",
        f"Experiments: {base}/admin/experiments/{f'{experiment}/' if experiment else ''}",
        "Ctrl-C stops the server, the worker, beat and the embedded services.",
        "=" * 78,
        "",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)


def shown_example(port: str, key: str) -> tuple[str, list[str]]:
    """A real answer for user-000001 (its recommendation id and items), for the feedback examples."""
    try:
        answer: Any = api_call(port, key, "GET", "/api/v1/users/user-000001/recommendations?limit=2")
    except urllib.error.URLError as error:
        log(f"could not fetch an answer for the feedback examples: {error}")
        return "RECOMMENDATION_ID", ["item-000010", "item-000011"]
    return answer["recommendation_id"], [item["id"] for item in answer["items"]] or ["item-000010"]


def experiment_examples(
    base: str, auth: str, json_type: str, experiment: int | None, answer: tuple[str, list[str]]
) -> list[tuple[str, str]]:
    """The feedback loop: what was shown, what was clicked, and the experiment's numbers."""
    recommendation_id, items = answer
    impression = {"recommendation_id": recommendation_id, "user": "user-000001", "items": items}
    click = {"user": "user-000001", "item": items[0], "type": "click", "recommendation_id": recommendation_id}
    shown = f"-d '{json.dumps({'impressions': [impression]})}'"
    clicked = f"-d '{json.dumps({'interactions': [click]})}'"
    number = experiment or 1
    return [
        (
            "Report what was shown (the recommendation_id of the answer that showed it), then a click",
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/impressions {shown}\n"
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/interactions {clicked}",
        ),
        (
            "The experiment: per variant users, impressions, clicks, CTR with its interval, the test",
            f"curl -s {auth} {base}/api/v1/experiments/{number}\ncurl -s {auth} {base}/api/v1/experiments",
        ),
        (
            "Start an A/B test (admin scope): a model version against a shuffled baseline, 90/10",
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/experiments "
            """-d '{"name": "homepage test", "scenario": "homepage", "control": "model", "variants": ["""
            """{"name": "model", "weight": 9}, """
            """{"name": "shuffled", "weight": 1, "config": {"strategy": "shuffled"}}]}'""",
        ),
        (
            "Stop it, or promote a winner (activates its model version)",
            f"curl -s -X POST {auth} {base}/api/v1/experiments/{number}/stop\n"
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/experiments/{number}/promote "
            """-d '{"variant": "active"}'""",
        ),
    ]
