"""What the ranking stage adds to an uncached personalised request, at 100k items, in-process.

A generated catalogue (``generate_demo_data``: 100,000 items in topics, with categories) and its
interactions in a scratch database; a collaborative run in this process (what the worker does:
the ranking stage is trained in it; tuning off to keep the run short); then the same users asked
for 10 recommendations with the stage off and forced on, interleaved, the answer cache off. Wall
time per request (p50, p90), this process's and PostgreSQL's CPU time, both arms in the same run:
the ratio is what the stage costs, whatever the machine's load. ``--profile`` adds where a ranked
request's time goes: each statement it sends under EXPLAIN ANALYZE, and a cProfile of the stage.

    python -m recsys.run exec -- python bench/ranking.py [--items 100000] [--interactions 1000000]
        [--keep] [--reuse] [--profile]

``--movielens`` instead judges the stage on ml-latest-small's validation split in-process (no
database: the run's own offline code, ``ranking_stage_train``), at the configured depth and trees
and at the previous ones (depth 100, 200 trees at learning rate 0.05), over four seeds.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MOVIELENS,
    database_recreate,
    database_url,
    drop_database,
    machine,
    manage,
    postgres_cpu_seconds,
    write_section,
)


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
    parser.add_argument(
        "--reuse", action="store_true", help="use the data a --keep run of the same size left (and keep it)"
    )
    parser.add_argument("--no-train", action="store_true", help="with --reuse: serve the version it trained")
    parser.add_argument("--profile", action="store_true", help="statements under EXPLAIN ANALYZE, cProfile")
    parser.add_argument("--movielens", action="store_true", help="validation NDCG on ml-latest-small, in-process")
    args = parser.parse_args()
    if args.movielens:
        lines = movielens_lines()
        write_section("ranking-validation", "\n".join(lines))
        print("\n".join(lines))
        return
    name = f"recsys_bench_ranking_{args.items}_{args.interactions}"
    url = database_url(name) if args.reuse else database_recreate(name)
    try:
        started = time.perf_counter()
        if not args.reuse:
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
        if args.no_train:
            from embeddings.models import Kind
            from embeddings.selectors import active_version

            version = active_version(kind=Kind.COLLABORATIVE)
            assert version is not None, "--no-train needs the version a --keep run trained"
        else:
            version = services.collaborative_model_train(version_id=services.collaborative_version_create().pk)
        train_s = sum(version.timings.values()) if args.no_train else time.perf_counter() - started
        report = VersionArtifacts.objects.get(version=version).ranking
        everyone = sorted(User.objects.values_list("external_id", flat=True))
        ids = random.Random(1).sample(everyone, min(args.requests, len(everyone)))  # the same users every run
        for user in ids[:20]:  # warm: the stage's state, prepared statements, the HNSW pages
            user_recommendations_list(user_external_id=user, limit=10, ranking=True)
            user_recommendations_list(user_external_id=user, limit=10, ranking=False)
        seen: dict[bool, set[str]] = {True: set(), False: set()}
        walls: dict[bool, list[float]] = {True: [], False: []}
        cpus: dict[bool, float] = {True: 0.0, False: 0.0}
        postgres: dict[bool, float] = {True: 0.0, False: 0.0}
        random.Random(0).shuffle(ids)
        for chunk in range(0, len(ids), 25):  # interleaved, so both arms see the same load
            for ranking in (False, True):
                before = postgres_cpu_seconds(url)
                wall, cpu, strategies = timed(
                    lambda u, r=ranking: user_recommendations_list(user_external_id=u, limit=10, ranking=r),
                    ids[chunk : chunk + 25],
                )
                postgres[ranking] += (postgres_cpu_seconds(url) - before) * 1000
                walls[ranking] += wall
                cpus[ranking] += cpu * len(wall)
                seen[ranking] |= strategies
        lines = report_lines(args, version, report, walls, cpus, postgres, seen, load_s, train_s)
        if args.profile:
            ask = lambda u: user_recommendations_list(user_external_id=u, limit=10, ranking=True)  # noqa: E731
            lines += statement_lines(ask, ids[0]) + profile_lines(ask, ids[:100])
    finally:
        if not (args.keep or args.reuse):  # a reused database is the --keep run's: never dropped here
            drop_database(url)
    write_section("ranking-serve", "\n".join(lines))
    print("\n".join(lines))


def statements_sent(call: Callable[[], object]) -> list[tuple[Any, Any]]:
    """The (query, params) of every statement ``call`` sends (psycopg's execute, recorded)."""
    import psycopg

    sent: list[tuple[Any, Any]] = []
    execute = psycopg.Cursor.execute

    def recording(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        sent.append((query, params))
        return execute(self, query, params, **kwargs)

    psycopg.Cursor.execute = recording  # type: ignore[method-assign]
    try:
        call()
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    return sent


def statement_lines(ask: Callable[[str], object], user: str) -> list[str]:
    """Each statement of one ranked request, run again under EXPLAIN ANALYZE."""
    from psycopg import sql

    from embeddings.vectors.tables import cursor

    lines = [
        f"Statements of one ranked request (user {user}), each run again under `EXPLAIN (ANALYZE, BUFFERS)`:",
        "",
        "| statement | plan (top node) | planning ms | execution ms |",
        "|---|---|---:|---:|",
    ]
    for query, params in statements_sent(lambda: ask(user)):
        with cursor() as cur:
            text = query.as_string(cur) if isinstance(query, sql.Composable) else str(query)
            if "set_config" in text:
                continue
            plan = [r[0] for r in cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params).fetchall()]
        print(f"---- {' '.join(text.split())[:300]}\n" + "\n".join(plan))
        timing = {p.split(":")[0].strip(): p.split(":")[1].strip() for p in plan if p.endswith(" ms")}
        planning, execution = (timing.get(k, "?").removesuffix(" ms") for k in ("Planning Time", "Execution Time"))
        top = plan[0].split("  (")[0].strip()[:60]
        lines.append(f"| `{' '.join(text.split())[:70]}…` | {top} | {planning} | {execution} |")
    return [*lines, ""]


SEEDS = (42, 1, 2, 3)  # the ranker's (fold assignment, negative sampling, LightGBM's bagging)
PREVIOUS = {"depth": 100, "n_estimators": 200, "learning_rate": 0.05}  # before the serving cuts


def movielens_context() -> tuple[Any, str]:
    """ml-latest-small's positives (ratings >= 4, binary) as a run sees them: the per-user 80/20
    validation split (seed 42), EASE (rank 400) as the tuning search picks it on that split, and
    the offline context of the ranking stage (genres as categories; no publication dates, so
    every item's age is 0; no content version)."""
    import csv

    import numpy as np
    import scipy.sparse as sp
    from django.conf import settings

    from embeddings.learners import LearnerParams, fit
    from embeddings.ranking.offline import ItemFacts, OfflineContext, ranking_state_build
    from embeddings.tuning import TuningSettings, collaborative_search, validation_split

    rows = [r for r in csv.DictReader((MOVIELENS / "ratings.csv").open()) if float(r["rating"]) >= 4]
    users = {u: k for k, u in enumerate(sorted({r["userId"] for r in rows}, key=int))}
    movies = sorted({r["movieId"] for r in rows}, key=int)
    column = {m: k for k, m in enumerate(movies)}
    at = (np.array([users[r["userId"]] for r in rows]), np.array([column[r["movieId"]] for r in rows]))
    shape = (len(users), len(movies))
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), at), shape=shape)
    times = sp.csr_matrix((np.array([float(r["timestamp"]) for r in rows]), at), shape=shape)
    genres = {r["movieId"]: r["genres"] for r in csv.DictReader((MOVIELENS / "movies.csv").open())}
    categories = [[g for g in genres[m].split("|") if g != "(no genres listed)"] for m in movies]
    split = validation_split(matrix, seed=42)
    # EASE only, at its full rank: under load the search's time estimates would shrink the rank.
    search = collaborative_search(
        split,
        LearnerParams(algorithm="ease", factors=400),
        options=TuningSettings(budget_seconds=600, ease_min_factors=400),
    )
    factors = fit(split.train, search.params)
    reference = float(times.data.max())
    train_times = times.multiply(split.train != 0).tocsr()
    n = len(movies)
    context = OfflineContext(
        split=split,
        times=train_times,
        user_scores=lambda row: factors.scores(np.array([row]))[0],
        state=ranking_state_build(split.train, train_times, np.arange(n), reference=reference),
        items=ItemFacts(np.zeros(n, np.float32), categories, np.empty((n, 0), np.float32), None),
        reference=reference,
        half_life_days=settings.RECSYS_CONTENT_PROFILE_HALF_LIFE_DAYS,
        depth=settings.RECSYS_RANKING_DEPTH,
    )
    p = search.params
    return context, f"EASE rank {p.factors}, λ {p.regularization:.0f}, β {p.popularity:+.1f}"


def movielens_lines() -> list[str]:
    """The ranking-validation section: the stage at the current and the previous depth and trees."""
    import dataclasses

    import numpy as np

    setup(os.environ["DATABASE_URL"])
    from django.conf import settings

    from embeddings.ranking import ranker
    from embeddings.ranking.offline import ranking_stage_train

    context, learner = movielens_context()
    current = {"depth": context.depth, **{k: ranker.PARAMS[k] for k in ("n_estimators", "learning_rate")}}
    reports: dict[str, list[dict[str, Any]]] = {}
    for name, config in (("current", current), ("previous", PREVIOUS)):
        saved = dict(ranker.PARAMS)
        ranker.PARAMS.update(n_estimators=config["n_estimators"], learning_rate=config["learning_rate"])
        try:
            reports[name] = [
                ranking_stage_train(
                    dataclasses.replace(context, depth=config["depth"]),
                    attributes=[],
                    max_users=settings.RECSYS_RANKING_TRAIN_USERS,
                    min_gain=settings.RECSYS_RANKING_MIN_GAIN,
                    min_users=settings.RECSYS_RANKING_MIN_USERS,
                    seed=seed,
                ).report
                for seed in SEEDS
            ]
        finally:
            ranker.PARAMS.clear()
            ranker.PARAMS.update(saved)
    first = reports["current"][0]
    recall = first["recall@depth"]
    absent = {"content"} if context.items.content is None else set()
    sources = sorted(((k, v) for k, v in first["sources_ndcg@10"].items() if k not in absent), key=lambda kv: -kv[1])
    importances = sorted(first["importances"].items(), key=lambda kv: -kv[1])[:4]

    def described(config: dict[str, Any]) -> str:
        return f"depth {config['depth']}, {config['n_estimators']} trees at learning rate {config['learning_rate']}"

    def seeds_row(name: str, config: dict[str, Any]) -> str:
        ranked = [r["ndcg@10"] for r in reports[name]]
        per_seed = " / ".join(f"{v:.4f}" for v in ranked)
        return (
            f"| {described(config)} | {per_seed} | {np.mean(ranked):.4f} | "
            f"{np.mean([r['gain'] for r in reports[name]]):+.1%} | {reports[name][0]['candidates_per_user']:.0f} |"
        )

    return [
        "## The ranking stage on validation (in-process, ml-latest-small) (`bench/ranking.py --movielens`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (load average {os.getloadavg()[0]:.1f}: only NDCG "
        "figures, no timings). ml-latest-small's positives (ratings ≥ 4, binary), the per-user 80/20 validation "
        f"split a training run makes (seed 42), the tuning search's EASE on it ({learner}: validation NDCG@10 "
        f"{first['best_source_ndcg@10']:.3f} as the collaborative source), then "
        "`embeddings.ranking.offline.ranking_stage_train` as a run calls it (all "
        f"{first['users']} validation users, 2-fold cross-fitted; genres as categories, no publication dates; no "
        "content version, so the content source is absent). The configured stage "
        f"({described(current)}), seed 42:",
        "",
        f"| ranking | NDCG@10 (validation) | recall@{first['depth']} of held-out items |",
        "|---|---:|---:|",
        f"| **ranked** (LightGBM lambdarank) | {first['ndcg@10']:.4f} | {recall['union']:.3f} (union: the ceiling) |",
        *[f"| {name} | {value:.4f} | {recall[name]:.3f} |" for name, value in sources],
        "",
        f"The stage is **{first['gain']:+.1%}** against the best single source: "
        + ("served by default" if first["used"] else "a run records it as not served by default")
        + f" (top features by gain: {', '.join(f'{k} {v:.0%}' for k, v in importances)}).",
        "",
        "Against the depth and trees before the serving cuts (the ranked NDCG@10 over four seeds of the "
        "ranker's folds and sampling; the sources' figures do not depend on them):",
        "",
        "| stage | ranked NDCG@10, seeds " + " / ".join(map(str, SEEDS)) + " | mean | mean gain | candidates |",
        "|---|---|---:|---:|---:|",
        seeds_row("current", current),
        seeds_row("previous", PREVIOUS),
        "",
    ]


# The stage's parts as cProfile names them: (module file suffix, function).
PARTS = (
    ("embeddings/recommendations.py", "_user_state", "the user's state (history, vector)"),
    ("embeddings/ranking/serving.py", "ranked_list", "the stage, all of it"),
    ("embeddings/vectors/search.py", "nearest_items", "content ANN (SQL)"),
    ("embeddings/vectors/rows.py", "candidate_rows", "collaborative ANN, candidates' facts and scores (SQL)"),
    ("embeddings/ranking/sources.py", "cooccurrence_scores", "co-occurrence source"),
    ("embeddings/ranking/sources.py", "newest", "category_recent source"),
    ("embeddings/ranking/sources.py", "candidates_merge", "merging the sources"),
    ("embeddings/ranking/serving.py", "facts_from_rows", "the candidates' facts from the rows"),
    ("embeddings/ranking/features.py", "features_build", "the feature matrix"),
    ("embeddings/ranking/ranker.py", "predict", "LightGBM predict"),
)


def profile_lines(ask: Callable[[str], object], users: list[str]) -> list[str]:
    """Wall milliseconds per request in each part of the stage, under cProfile (which adds its own)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for user in users:
        ask(user)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    lines = [
        f"Where a ranked request's time goes: cProfile over {len(users)} ranked requests (wall ms per request, "
        "cumulative: a part includes what it calls; cProfile's own overhead inflates Python-heavy parts).",
        "",
        "| part | function | ms / request |",
        "|---|---|---:|",
    ]
    for suffix, function, label in PARTS:
        total = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == function)
        lines.append(f"| {label} | `{function}` | {total * 1000 / len(users):.2f} |")
    return [*lines, ""]


def report_lines(args, version, report, walls, cpus, postgres, seen, load_s, train_s) -> list[str]:  # type: ignore[no-untyped-def]
    def row(name: str, ranking: bool) -> str:
        values = sorted(walls[ranking])
        p50, p90 = statistics.median(values), values[int(0.9 * (len(values) - 1))]
        cpu, pg = cpus[ranking] / len(values), postgres[ranking] / len(values)
        return f"| {name} | {p50:.2f} | {p90:.2f} | {cpu:.2f} | {pg:.2f} | {', '.join(sorted(seen[ranking]))} |"

    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    load = os.getloadavg()
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in report.get("seconds", {}).items())
    return [
        "## The ranking stage's serving cost (`bench/ranking.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (load average {load[0]:.1f} at the end: the machine "
        f"is shared); generated data, {args.items:,} items, {args.interactions:,} interactions "
        + ("(reused from a `--keep` run), " if args.reuse else f"(loaded in {load_s:.0f} s), ")
        + f"collaborative v{version.pk} ({version.algorithm}, {version.dimensions}-d, tuning off) trained "
        f"in-process in {train_s:.0f} s (ranking stage "
        f"{version.timings.get('ranking', 0):.1f} s of it: {seconds}). "
        "No content version (MiniLM over 100k items is hours here), so the content source is absent. "
        f"Depth {report.get('depth')} candidates per source. "
        f"{len(walls[False])} uncached requests per arm, interleaved in chunks of 25, limit 10.",
        "",
        "| arm | p50 ms | p90 ms | CPU ms / request (this process) | PostgreSQL CPU ms / request | strategies |",
        "|---|---:|---:|---:|---:|---|",
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
