"""``make demo``: prepare demo data and credentials, serve, and print curl examples that work."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from recsys.run import BASE_DIR, PYTHON, log, manage


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
    return serve(env, port, on_ready=lambda: print_examples(port, credentials))


def print_examples(port: str, credentials: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{port}"
    auth = f'-H "Authorization: Bearer {credentials["api_key"]}"'
    json_type = '-H "Content-Type: application/json"'
    examples = [
        ("Health (no key needed)", f"curl -s {base}/api/v1/health"),
        ("Read an item", f"curl -s {auth} {base}/api/v1/items/item-000001"),
        ("A user's history, newest first", f'curl -s {auth} "{base}/api/v1/users/user-000001/interactions?limit=5"'),
        (
            "Upsert an item",
            f"curl -s -X PUT {auth} {json_type} {base}/api/v1/items/my-item "
            """-d '{"title": "Trail running shoes", "text": "Light shoes for rocky trails", """
            """"categories": ["outdoor"]}'""",
        ),
        (
            "Send interactions (partial success: bad rows are reported by index)",
            f"curl -s -X POST {auth} {json_type} {base}/api/v1/interactions "
            """-d '{"interactions": [{"user": "alice", "item": "my-item", "type": "purchase", """
            """"timestamp": "2026-01-01T12:00:00Z"}, {"user": "alice", "item": "my-item", "type": "teleport"}]}'""",
        ),
    ]
    lines = ["", "=" * 78, f"recsys demo is up on {base}", ""]
    for title, command in examples:
        lines += [f"# {title}", command, ""]
    lines += [
        f"API docs:  {base}/api/docs/",
        f"Admin:     {base}/admin/  (user {credentials['username']!r}, password {credentials['password']!r})",
        "Ctrl-C stops the server, the worker, beat and the embedded services.",
        "=" * 78,
        "",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)
