"""CPU per uncached personalised request of two checkouts of the code, measured in interleaved rounds
against the same kept database (``bench/serve_profile.py``'s in-process WSGI calls), with medians.

    git worktree add /tmp/before <commit>   # or: git archive <commit> | tar -x -C /tmp/before
    python -m recsys.run exec -- python bench/serve_compare.py --database recsys_bench_serve_100000_10000000 \\
        --before /tmp/before --rounds 6

Each round runs a fresh process per checkout (its own connection, warmed with 200 requests), before
and after alternating and swapping which goes first, so that the machine's load (shared cores)
falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import database_url, vacuum_analyze

ROOT = Path(__file__).resolve().parent.parent

# Run inside the checkout measured: its own serve_profile (setup, caller, measure) and its own code.
ROUND = """
import json, os, random, sys
tree, database, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(tree); sys.path[:0] = [tree, tree + "/bench"]
import psutil, serve_profile as sp
sp.setup(database)
from recsys.api_keys import api_key_create
from recsys.models import User
_, key = api_key_create(name="compare", scopes=["read"], rate_limit="1000000/min")
users = list(User.objects.order_by("?").values_list("external_id", flat=True)[:requests])
paths = [f"/api/v1/users/{u}/recommendations?limit=10" for u in users]
call = sp.caller(key)
for path in paths[:200]:
    call(path)
random.shuffle(paths)
figures = sp.measure(call, paths)
print(json.dumps({**figures, "load": os.getloadavg()[0]}))
"""


def measure_round(tree: Path, database: str, requests: int, env: dict[str, str]) -> dict[str, float]:
    answer = subprocess.run(
        [sys.executable, "-c", ROUND, str(tree), database, str(requests)],
        env=dict(os.environ, RECSYS_INSECURE_DEV_KEY="true", **env),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(answer.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", required=True, help="a kept benchmark database (bench/serve.py --reuse)")
    parser.add_argument("--before", required=True, type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--after-env", nargs="*", default=[], metavar="NAME=VALUE", help="settings for the after side alone"
    )
    args = parser.parse_args()
    envs = {"before": {}, "after": dict(pair.split("=", 1) for pair in args.after_env)}
    vacuum_analyze(database_url(args.database))  # as autovacuum would have; quick once done
    trees = {"before": args.before.resolve(), "after": ROOT}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for n in range(args.rounds):
        order = list(trees) if n % 2 == 0 else list(reversed(trees))
        for name in order:
            figures = measure_round(trees[name], args.database, args.requests, envs[name])
            runs[name].append(figures)
            print(f"round {n + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    print(f"\nmedians of {args.rounds} rounds, {args.requests} requests each (CPU ms per request):")
    for name, rounds in runs.items():
        web, pg = (statistics.median(f[k] for f in rounds) for k in ("web_cpu", "pg_cpu"))
        loads = [f["load"] for f in rounds]
        total = web + pg
        print(
            f"  {name}: web {web:.2f} + PostgreSQL {pg:.2f} = {total:.2f} ms ({1000 / total:.0f} req/s per core); "
            f"wall p50 {statistics.median(f['p50'] for f in rounds):.1f} ms; load {min(loads):.1f}-{max(loads):.1f}"
        )


if __name__ == "__main__":
    main()
