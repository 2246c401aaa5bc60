"""What the ranking stage adds to an uncached personalised request, at 100k items, in-process.

A generated catalogue (``generate_demo_data``: 100,000 items in topics, with categories) and its
interactions in a scratch database; a collaborative run in this process (what the worker does:
the ranking stage is trained in it; tuning off to keep the run short); then the same users asked
for 10 recommendations with the stage off and forced on, interleaved, the answer cache off. Wall
time per request (p50, p90) and this process's CPU time, both arms in the same run: the ratio is
what the stage costs, whatever the machine's load.

    python -m recsys.run exec -- python bench/ranking.py [--items 100000] [--interactions 1000000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drop_database, machine, manage, scratch_database_url, write_section


def setup(url: str) -> None:
    os.environ.update(
        DATABASE_URL=url,
        RECSYS_INSECURE_DEV_KEY="true",
        RECSYS_ANSWER_CACHE_SECONDS="0",
        RECSYS_CF_TUNE="false",
        RECSYS_RANKING="true",
        RECSYS_SERVING_STATEMENT_TIMEOUT_MS="5000",
        DJANGO_SETTINGS_MODULE="recsys.settings",
    )
    os.environ.pop("CELERY_TASK_ALWAYS_EAGER", None)
    import django

    django.setup()


def timed(call, users: list[str]) -> tuple[list[float], float, set[str]]:  # type: ignore[no-untyped-def]
    walls, strategies = [], set()
    cpu = time.process_time()
    for user in users:
        started = time.perf_counter()
        strategies.add(call(user).strategy)
        walls.append((time.perf_counter() - started) * 1000)
    return walls, (time.process_time() - cpu) * 1000 / len(users), strategies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    url = scratch_database_url(f"recsys_bench_ranking_{args.items}")
    try:
        started = time.perf_counter()
        users = max(1000, args.interactions // 100)
        manage(url, "generate_demo_data", "--items", str(args.items), "--users", str(users),
               "--interactions", str(args.interactions), "--no-progress")  # fmt: skip
        load_s = time.perf_counter() - started
        setup(url)
        from embeddings import services
        from embeddings.models import VersionArtifacts
        from embeddings.recommendations import user_recommendations_list
        from recsys.models import User

        started = time.perf_counter()
        version = services.collaborative_model_train(version_id=services.collaborative_version_create().pk)
        train_s = time.perf_counter() - started
        report = VersionArtifacts.objects.get(version=version).ranking
        ids = list(User.objects.order_by("?").values_list("external_id", flat=True)[: args.requests])
        for user in ids[:20]:  # warm: the stage's state, prepared statements, the HNSW pages
            user_recommendations_list(user_external_id=user, limit=10, ranking=True)
            user_recommendations_list(user_external_id=user, limit=10, ranking=False)
        seen: dict[bool, set[str]] = {True: set(), False: set()}
        walls: dict[bool, list[float]] = {True: [], False: []}
        cpus: dict[bool, float] = {True: 0.0, False: 0.0}
        random.Random(0).shuffle(ids)
        for chunk in range(0, len(ids), 25):  # interleaved, so both arms see the same load
            for ranking in (False, True):
                wall, cpu, strategies = timed(
                    lambda u, r=ranking: user_recommendations_list(user_external_id=u, limit=10, ranking=r),
                    ids[chunk : chunk + 25],
                )
                walls[ranking] += wall
                cpus[ranking] += cpu * len(wall)
                seen[ranking] |= strategies
        lines = report_lines(args, version, report, walls, cpus, seen, load_s, train_s)
    finally:
        if not args.keep:
            drop_database(url)
    write_section("ranking-serve", "\n".join(lines))
    print("\n".join(lines))


def report_lines(args, version, report, walls, cpus, seen, load_s, train_s) -> list[str]:  # type: ignore[no-untyped-def]
    def row(name: str, ranking: bool) -> str:
        values = sorted(walls[ranking])
        p50, p90 = statistics.median(values), values[int(0.9 * (len(values) - 1))]
        cpu = cpus[ranking] / len(values)
        return f"| {name} | {p50:.2f} | {p90:.2f} | {cpu:.2f} | {', '.join(sorted(seen[ranking]))} |"

    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    load = os.getloadavg()
    return [
        "## The ranking stage's serving cost (`bench/ranking.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (load average {load[0]:.1f} at the end: the machine "
        f"is shared); generated data, {args.items:,} items, {args.interactions:,} interactions "
        f"(loaded in {load_s:.0f} s), "
        f"collaborative v{version.pk} ({version.algorithm}, {version.dimensions}-d, tuning off) trained in-process in "
        f"{train_s:.0f} s (ranking stage {version.timings.get('ranking', 0):.0f} s of it). No content version (MiniLM "
        "over 100k items is hours here), so the content source is absent. "
        f"{len(walls[False])} uncached requests per arm, interleaved in chunks of 25, limit 10.",
        "",
        "| arm | p50 ms | p90 ms | CPU ms / request (this process) | strategies |",
        "|---|---:|---:|---:|---|",
        row("stage off (`ranking=False`)", False),
        row("stage forced (`ranking=True`)", True),
        "",
        f"The stage adds **{on - off:.2f} ms p50** ({on / off:.2f}× the request; target ≤ 5 ms added). "
        f"Validation of this run: ranked {report.get('ndcg@10', 0):.4f} vs best source {report.get('best_source')} "
        f"{report.get('best_source_ndcg@10', 0):.4f} ({report.get('gain', 0):+.1%}), "
        f"{report.get('candidates_per_user', 0):.0f} candidates per user.",
        "",
    ]


if __name__ == "__main__":
    main()
