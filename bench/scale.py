"""Training at scale: generated interactions (power-law popularity) loaded set-based into monthly
partitions, then the training path's phases (load, fit, evaluate, store vectors + HNSW) with wall and CPU
time and each phase's peak RSS. Writes its section of BENCHMARKS.md.

    python -m recsys.run exec -- python bench/scale.py --interactions 10000000
    python -m recsys.run exec -- python bench/scale.py --interactions 100000000 --users 1000000 --items 200000
    # load once, keep it, then measure only the worker's whole run (as often as needed)
    python -m recsys.run exec -- python bench/scale.py --reuse --whole-run-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import database_recreate, database_url, drop_database, machine, postgres_cpu_seconds, write_section

T = TypeVar("T")
CHUNK = 1_000_000
MONTHS = 12
VERSION_ID = 900_001  # the vector tables' name; the scratch database is dropped afterwards


def rss_peak_reset() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process, so each phase reports its own peak."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name: str, figures: dict[str, dict[str, float]], url: str, work: Callable[[], T]) -> T:
    rss_peak_reset()
    wall, cpu, server = time.perf_counter(), time.process_time(), postgres_cpu_seconds(url)
    result = work()
    figures[name] = {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "pg_cpu": postgres_cpu_seconds(url) - server,
        "rss_peak_mib": rss_peak_mib(),
        "load_average": os.getloadavg()[0],  # 1-minute, at the phase's end: how shared the 2 cores were
    }
    print(f"{name}: {figures[name]}", flush=True)
    return result


def generated_batches(users: range, items: range, n: int, start_us: int, span_us: int) -> Iterator[Any]:
    """Events in time order (each a distinct microsecond: no repeats), users with skewed activity and items
    with power-law popularity (item rank = n_items * u**3: the top 1% of items take ~22% of events)."""
    from recsys.ingestion.rules import EventArrays

    rng = np.random.default_rng(11)
    step = span_us // n
    for first in range(0, n, CHUNK):
        size = min(CHUNK, n - first)
        user = users.start + (len(users) * rng.random(size) ** 1.5).astype(np.int64)
        item = items.start + (len(items) * rng.random(size) ** 3).astype(np.int64)
        codes = np.zeros(size, dtype=np.int16)  # set by the caller's rules
        stamps = start_us + (first + np.arange(size, dtype=np.int64)) * step
        yield EventArrays(user, item, codes, np.full(size, np.nan), stamps)


def load(url: str, args: argparse.Namespace, figures: dict[str, dict[str, float]]) -> None:
    from django.db import connection

    from recsys.ingestion.events import event_rules_load, interaction_arrays_load

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO recsys_user (external_id, attributes, created_at, updated_at)"
            " SELECT 'u' || g, '{}', now(), now() FROM generate_series(1, %s) g",
            [args.users],
        )
        cursor.execute(
            "INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,"
            " created_at, updated_at) SELECT 'i' || g, '', '', '{}', '{}', false, false, now(), now()"
            " FROM generate_series(1, %s) g",
            [args.items],
        )
        cursor.execute("SELECT min(id), max(id) FROM recsys_user")
        user_low, user_high = cursor.fetchone()
        cursor.execute("SELECT min(id), max(id) FROM recsys_item")
        item_low, item_high = cursor.fetchone()
    rules = event_rules_load()
    view = rules.names.index("view")
    now_us = int(time.time() * 1e6)
    span = MONTHS * 30 * 86_400 * 1_000_000
    batches = generated_batches(
        range(user_low, user_high + 1),
        range(item_low, item_high + 1),
        args.interactions,
        now_us - span - 86_400 * 1_000_000,
        span,
    )

    def typed() -> Iterator[Any]:
        for events in batches:
            events.codes[:] = view
            yield events

    report = phase("load into PostgreSQL", figures, url, lambda: interaction_arrays_load(batches=typed(), rules=rules))
    figures["load into PostgreSQL"]["rows"] = report.created
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE recsys_interaction")


def train(url: str, args: argparse.Namespace, figures: dict[str, dict[str, float]]) -> dict[str, float]:
    from embeddings import services
    from embeddings.evaluation import ranking_metrics, scores_recommender
    from embeddings.learners import LearnerParams, fit
    from embeddings.tuning import validation_split
    from embeddings.vectors import tables

    data = phase("load (binary COPY → CSR)", figures, url, lambda: services.interactions_load(half_life_days=None))
    params = LearnerParams(factors=args.factors, iterations=args.iterations, regularization=0.05)
    split = phase("holdout split", figures, url, lambda: validation_split(data.matrix, seed=1))
    factors = phase(
        f"fit ALS ({args.factors} factors, {args.iterations} iterations)",
        figures,
        url,
        lambda: fit(split.train, params),
    )
    metrics = phase(
        "evaluate (2,000 users)",
        figures,
        url,
        lambda: ranking_metrics(scores_recommender(factors.scores, split.train), split, max_users=2000),
    )

    def store() -> str:
        kind = tables.vector_type_choose(items=len(data.item_ids), values=[factors.item, factors.user])
        tables.tables_create(VERSION_ID, factors.dimensions, kind)
        tables.vectors_copy(VERSION_ID, "item", data.item_ids, factors.item, vector_type=kind)
        tables.vectors_copy(VERSION_ID, "user", data.user_ids, factors.user, vector_type=kind)
        tables.index_build(VERSION_ID, "item", kind)
        return kind

    vector_type = phase("store vectors (COPY + HNSW on items)", figures, url, store)
    metrics["vector_type"] = vector_type  # type: ignore[assignment]
    metrics["hnsw_recall@10"] = hnsw_recall(factors.user, 200, vector_type)
    metrics["matrix_nnz"] = float(data.matrix.nnz)
    if args.whole_run:
        version = phase("whole training run (services, with the tuning search)", figures, url, whole_run)
        metrics.update(whole_run_summary(version))  # type: ignore[arg-type]
    return metrics


def scratch_or_reused(args: argparse.Namespace) -> tuple[str, bool]:
    """The database's URL, and whether it already holds the interactions (``--reuse``: then it is not
    re-created, and the versions earlier runs left in it stay, as a worker finds them)."""
    if args.reuse:
        url = database_url(args.database)
        try:
            with psycopg.connect(url) as conn:
                count = conn.execute("SELECT count(*) FROM (SELECT 1 FROM recsys_interaction LIMIT 1) t").fetchone()
                if count and count[0]:
                    return url, True
        except psycopg.OperationalError:
            pass  # no such database yet
    return database_recreate(args.database), False


def whole_run_measure(url: str, figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Only the worker's whole run (``--whole-run-only``), with the load average before it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM recsys_interaction")
        nnz = cursor.fetchone()[0]
    before = os.getloadavg()[0]
    with phases_cpu() as cpu:
        version = phase("whole training run (services, with the tuning search)", figures, url, whole_run)
    figures["whole training run (services, with the tuning search)"]["load_average_before"] = before
    return {"events": float(nnz), **whole_run_summary(version), "whole_run_cpu": cpu}


@contextlib.contextmanager
def phases_cpu() -> Iterator[dict[str, float]]:
    """This process's CPU seconds in the run's costly steps (the search, each fit the run itself makes,
    the metrics, the store), read by wrapping the services' calls for the duration."""
    from embeddings import services

    cpu: dict[str, float] = {}
    names = {
        "collaborative_search": "search",
        "fit": "fits (winner for metrics and/or final)",
        "ranking_metrics": "metrics (version and popularity)",
        "validation_split": "validation split",
        "interactions_load_timed": "load",
        "_store": "store",
    }
    originals = {name: getattr(services, name) for name in names}

    def timed(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return originals[name](*args, **kwargs)
            finally:
                cpu[names[name]] = cpu.get(names[name], 0.0) + time.process_time() - started

        return call

    for name in names:
        setattr(services, name, timed(name))
    try:
        yield cpu
    finally:
        for name, original in originals.items():
            setattr(services, name, original)


def whole_run_summary(version: Any) -> dict[str, Any]:
    candidates = version.progress.get("candidates") or []
    return {
        "whole_run_timings": version.timings,
        "whole_run_search": {
            "chosen": f"{version.algorithm} {version.params.get('factors')}-d",
            "candidates": len(candidates),
            "by_algorithm": {
                a: sum(c["algorithm"] == a for c in candidates) for a in {c["algorithm"] for c in candidates}
            },
            "skipped": version.progress.get("tuning_skipped"),
            "sample": version.progress.get("tuning_sample"),
            "metrics": version.metrics,
            "status": version.status,
        },
    }


def whole_run() -> Any:
    """The run a worker executes (claim, load, search, fit, store, activate), in this process."""
    from embeddings import services

    version = services.collaborative_version_create()
    return services.collaborative_model_train(version_id=version.pk)


def hnsw_recall(user_vectors: Any, queries: int, vector_type: str) -> float:
    """recall@10 of the HNSW index against exact search (index scans off), for ``queries`` users' vectors."""
    from embeddings.vectors import tables

    table = tables.item_table(VERSION_ID)
    rng = np.random.default_rng(5)
    hits = 0
    with tables.cursor() as cur:
        cur.execute("SET hnsw.ef_search = 100")
        for row in rng.choice(len(user_vectors), size=min(queries, len(user_vectors)), replace=False):
            vector = tables.query_vector(user_vectors[row], vector_type)
            query = f"SELECT item_id FROM {table} ORDER BY embedding <#> %s LIMIT 10"
            cur.execute(query, [vector])
            approximate = {r[0] for r in cur.fetchall()}
            cur.execute("SET enable_indexscan = off")  # session-wide: the cursor autocommits, SET LOCAL would not hold
            cur.execute(query, [vector])
            exact = {r[0] for r in cur.fetchall()}
            cur.execute("RESET enable_indexscan")
            hits += len(approximate & exact)
    return hits / (10 * min(queries, len(user_vectors)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: interactions / 100")
    parser.add_argument("--items", type=int, default=0, help="default: interactions / 500")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--whole-run", action="store_true", help="then the whole training run as a worker runs it")
    parser.add_argument("--database", default="recsys_bench_scale", help="the scratch database's name")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database, and skip the load when it already holds interactions"
    )
    parser.add_argument("--whole-run-only", action="store_true", help="only the whole run (no training-path phases)")
    args = parser.parse_args()
    args.users = args.users or args.interactions // 100
    args.items = args.items or args.interactions // 500

    url, loaded = scratch_or_reused(args)
    args.keep = args.keep or args.reuse
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    os.environ.setdefault("RECSYS_INSECURE_DEV_KEY", "true")
    import django

    django.setup()
    figures: dict[str, dict[str, float]] = {}
    try:
        if not loaded:
            load(url, args, figures)
        metrics = whole_run_measure(url, figures) if args.whole_run_only else train(url, args, figures)
    finally:
        if not args.keep:
            from django.db import connection

            connection.close()
            drop_database(url)
    if loaded or args.whole_run_only:  # no load or no training path measured: the figures, not the section
        print(json.dumps({"figures": figures, "metrics": metrics}, indent=1, default=str))
        return
    report(args, figures, metrics)


def report(args: argparse.Namespace, figures: dict[str, dict[str, float]], metrics: dict[str, float]) -> None:
    rows = figures["load into PostgreSQL"]["rows"]
    training = [name for name in figures if name != "load into PostgreSQL" and not name.startswith("whole")]
    lines = [
        f"## Training at scale (`bench/scale.py`, {args.interactions:,} interactions)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, with whatever else ran on it (load average "
        f"~{os.getloadavg()[0]:.0f} on 2 cores at the end: compare CPU seconds, not wall). Generated: "
        f"{args.interactions:,} events of {args.users:,} users on {args.items:,} items (power-law popularity), "
        f"over {MONTHS} months; {metrics['matrix_nnz']:,.0f} distinct user-item pairs. No GPU on this machine: "
        "ALS ran on the CPU (`RECSYS_USE_GPU=auto` picks implicit's CUDA ALS where `implicit.gpu.HAS_CUDA`).",
        "",
        "| phase | wall | CPU (this process) | PostgreSQL CPU | peak RSS of the process | load average at its end |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {name} | {f['wall']:.1f} s | {f['cpu']:.1f} s | {f['pg_cpu']:.1f} s | {f['rss_peak_mib']:,.0f} MiB "
            f"| {f['load_average']:.1f} |"
            for name, f in figures.items()
        ],
        f"| **training path** (the phases from the load to the store) | "
        f"{sum(figures[n]['wall'] for n in training):.1f} s | {sum(figures[n]['cpu'] for n in training):.1f} s | "
        f"{sum(figures[n]['pg_cpu'] for n in training):.1f} s | "
        f"{max(figures[n]['rss_peak_mib'] for n in training):,.0f} MiB | |",
        "",
        f"Load into PostgreSQL: {rows / figures['load into PostgreSQL']['wall']:,.0f} rows/s wall, "
        f"{rows / max(figures['load into PostgreSQL']['pg_cpu'], 1e-9):,.0f} rows per PostgreSQL CPU-second "
        "(fresh months: COPY into standalone tables, indexes built after, attached as partitions). "
        f"Quality on the 20% holdout: NDCG@10 {metrics['ndcg@10']:.4f}, recall@10 {metrics['recall@10']:.4f}; "
        f"HNSW recall@10 against exact search (200 users' vectors, ef_search 100, `{metrics['vector_type']}` "
        f"columns): {metrics['hnsw_recall@10']:.3f}.",
    ]
    if "whole_run_timings" in metrics:
        lines += [
            "",
            f"The whole run as a worker runs it (`collaborative_model_train`: load, the tuning search within "
            f"`RECSYS_CF_TUNE_BUDGET_SECONDS`, final fit, store, activate): its own timings "
            f"{metrics['whole_run_timings']} (seconds, wall on this loaded machine); the search: "
            f"{metrics['whole_run_search']}.",
        ]
    write_section(f"scale-{args.interactions // 1_000_000}m", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
