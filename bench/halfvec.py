"""halfvec against vector: HNSW index size, build CPU and recall@10 of the served search against exact
search, for the same generated item vectors stored both ways through embeddings/vectors (pgvector ≥ 0.7).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \
        nice -n 19 python bench/halfvec.py --items 200000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import psutil
from common import database_recreate, drop_database, machine, write_section

K = 10
VERSIONS = {"vector": 910_001, "halfvec": 910_002}  # the tables' names; the scratch database is dropped


def generated(items: int, dims: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Item and query vectors shaped like a factor model's: items around 1,000 taste centres with
    log-normal norms (popular items are longer), queries (users) mixtures of a few centres."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(1000, dims)).astype(np.float32) / np.sqrt(dims)
    assigned = rng.integers(0, len(centres), items)
    vectors = centres[assigned] + 0.6 * rng.normal(size=(items, dims)).astype(np.float32) / np.sqrt(dims)
    vectors *= rng.lognormal(0.0, 0.5, size=(items, 1)).astype(np.float32)
    mix = rng.dirichlet(np.full(4, 0.5), size=queries).astype(np.float32)
    picked = rng.integers(0, len(centres), (queries, 4))
    users = np.einsum("qk,qkd->qd", mix, centres[picked]) * 3
    return vectors.astype(np.float32), users.astype(np.float32)


def exact_top(items: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    top = []
    for first in range(0, len(queries), 100):  # 100 queries x items scores at a time
        scores = queries[first : first + 100] @ items.T
        best = np.argpartition(-scores, K, axis=1)[:, :K]
        top += [set(ids[row].tolist()) for row in best]
    return top


def backend_cpu() -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return sum(psutil.Process(pid).cpu_times()[:2])


def store(vector_type: str, ids: np.ndarray, vectors: np.ndarray) -> dict[str, float]:
    """The version's item table through embeddings.vectors: COPY, then HNSW built in this backend alone
    (no parallel workers, so its CPU is the build's)."""
    from django.db import connection

    from embeddings.vectors import tables

    version = VERSIONS[vector_type]
    tables.tables_create(version, vectors.shape[1], vector_type)
    tables.vectors_copy(version, "item", ids, vectors, vector_type=vector_type)
    with connection.cursor() as cursor:
        cursor.execute("SET max_parallel_maintenance_workers = 0")
        cursor.execute("SET maintenance_work_mem = '1GB'")
    wall, cpu = time.perf_counter(), backend_cpu()
    tables.index_build(version, "item", vector_type)
    figures = {"build_wall": time.perf_counter() - wall, "build_cpu": backend_cpu() - cpu}
    table = tables.item_table(version)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(%s), pg_table_size(%s), pg_relation_size(%s)", [table, table, f"{table}_hnsw"]
        )
        heap, table_size, index = cursor.fetchone()
    figures.update(heap=heap, table=table_size, index=index)
    return figures


def searched(vector_type: str, queries: np.ndarray, ef: int) -> tuple[list[set[int]], float]:
    """The served search (``nearest_items``: the join, the filters, iterative scans on 0.8) at ``ef``;
    its answers and this backend's CPU ms per search."""
    from django.conf import settings

    from embeddings.vectors import tables
    from embeddings.vectors.search import nearest_items

    settings.RECSYS_HNSW_EF_SEARCH = ef
    table = tables.item_table(VERSIONS[vector_type])
    for query in queries[:20]:  # warm: the plan and the index pages
        nearest_items(table, query, vector_type=vector_type, limit=K)
    before = backend_cpu()
    answers = [{n.item_id for n in nearest_items(table, q, vector_type=vector_type, limit=K)} for q in queries]
    return answers, (backend_cpu() - before) / len(queries) * 1000


def items_insert(count: int) -> np.ndarray:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,"
            " created_at, updated_at) SELECT 'i' || g, '', '', '{}', '{}', false, false, now(), now()"
            " FROM generate_series(1, %s) g RETURNING id",
            [count],
        )
        return np.sort(np.array([r[0] for r in cursor.fetchall()], dtype=np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 64, 100])
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    url = database_recreate("recsys_bench_halfvec")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    os.environ.setdefault("RECSYS_INSECURE_DEV_KEY", "true")
    import django

    django.setup()
    from embeddings.vectors import tables

    if not tables.halfvec_available():
        raise SystemExit(f"pgvector {tables.pgvector_version()} on this server has no halfvec (0.7 or later needed)")
    started = time.perf_counter()
    try:
        ids = items_insert(args.items)
        vectors, queries = generated(args.items, args.dims, args.queries)
        truth = exact_top(vectors, ids, queries)
        # What float16 itself costs, before any index: the exact top 10 over the rounded vectors.
        rounded = exact_top(vectors.astype(np.float16).astype(np.float32), ids, queries)
        quantised = float(np.mean([len(a & t) / K for a, t in zip(rounded, truth, strict=True)]))
        sizes, results = {}, {}
        for vector_type in VERSIONS:
            sizes[vector_type] = store(vector_type, ids, vectors)
            print(vector_type, sizes[vector_type], flush=True)
            for ef in args.ef:
                answers, cpu_ms = searched(vector_type, queries, ef)
                recall = float(np.mean([len(a & t) / K for a, t in zip(answers, truth, strict=True)]))
                results[vector_type, ef] = (recall, cpu_ms)
                print(f"{vector_type} ef_search {ef}: recall@{K} {recall:.4f}, {cpu_ms:.2f} ms CPU", flush=True)
        version = ".".join(map(str, tables.pgvector_version()))
    finally:
        if not args.keep:
            from django.db import connection

            connection.close()
            drop_database(url)
    report(args, version, quantised, sizes, results, time.perf_counter() - started)


def report(
    args: argparse.Namespace,
    version: str,
    quantised: float,
    sizes: dict[str, dict[str, float]],
    results: dict[tuple[str, int], tuple[float, float]],
    seconds: float,
) -> None:
    mib = 2**20
    vector, half = sizes["vector"], sizes["halfvec"]
    lines = [
        f"## halfvec against vector, {args.dims} dimensions (`bench/halfvec.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (load average {os.getloadavg()[0]:.1f}), PostgreSQL "
        f"with pgvector {version}: {args.items:,} generated item vectors of {args.dims} dimensions (around 1,000 "
        "taste centres, log-normal norms, like a factor model's items), stored both ways through "
        "`embeddings/vectors` (COPY, then HNSW m 16, ef_construction 64, inner product, built by one backend "
        f"with no parallel workers); {args.queries:,} user-like query vectors. recall@{K}: the share of the exact "
        f"top {K} (numpy, float32, every item) that the served search (`nearest_items`: the join with items, "
        "the filters, iterative scans) returns.",
        "",
        "| | vector | halfvec | halfvec / vector |",
        "|---|---:|---:|---:|",
        f"| HNSW index (`pg_relation_size`) | {vector['index'] / mib:,.1f} MiB | {half['index'] / mib:,.1f} MiB "
        f"| {half['index'] / vector['index']:.2f} |",
        f"| table (heap + TOAST) | {vector['table'] / mib:,.1f} MiB | {half['table'] / mib:,.1f} MiB "
        f"| {half['table'] / vector['table']:.2f} |",
        f"| index build, backend CPU | {vector['build_cpu']:.1f} s | {half['build_cpu']:.1f} s "
        f"| {half['build_cpu'] / max(vector['build_cpu'], 1e-9):.2f} |",
        *(
            f"| recall@{K} at ef_search {ef} (PostgreSQL CPU per search) | {results['vector', ef][0]:.4f} "
            f"({results['vector', ef][1]:.2f} ms) | {results['halfvec', ef][0]:.4f} "
            f"({results['halfvec', ef][1]:.2f} ms) | |"
            for ef in args.ef
        ),
        "",
        f"float16 alone (exact search over the rounded vectors against float32's exact top {K}): recall@{K} "
        f"{quantised:.4f}. The table holds the item row's `fold_in` column too (empty here: ALS versions), "
        f"so its ratio is above the vectors' own 0.5; the index stores only the vectors. ({seconds:.0f} s)",
    ]
    # One section per dimension count: 64 (collaborative factors) and e.g. 384 (a MiniLM content model).
    write_section("halfvec" if args.dims == 64 else f"halfvec-{args.dims}d", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
