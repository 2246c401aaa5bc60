"""What HNSW's ef_search buys: recall@10 of the served index search against the exact answer, and
PostgreSQL's CPU per search, at several ef_search values, on a kept benchmark database.

    python -m recsys.run exec -- python bench/ann_recall.py --database recsys_bench_serve_100000_10000000
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
import psycopg
from common import database_url, machine, write_section
from pgvector.psycopg import register_vector

K = 10


def active_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT version_id FROM embeddings_activeversion WHERE kind = 'collaborative'").fetchone()
    if row is None:
        raise SystemExit("no active collaborative version in that database")
    return int(row[0])


def exact_top(items: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    scores = queries @ items.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return [set(ids[row].tolist()) for row in top]


def searched(conn: psycopg.Connection, table: str, queries: np.ndarray, ef: int) -> tuple[list[set[int]], float]:
    """The index search as served (inner product, LIMIT 10) at ``ef``; its answers and the backend's
    CPU ms per search."""
    conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])
    backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    statement = f"SELECT item_id FROM {table} ORDER BY embedding <#> %s LIMIT {K}"
    for query in queries[:20]:  # warm: the plan and the index pages
        conn.execute(statement, [query], prepare=True).fetchall()
    before = sum(backend.cpu_times()[:2])
    answers = [{r[0] for r in conn.execute(statement, [q], prepare=True).fetchall()} for q in queries]
    return answers, (sum(backend.cpu_times()[:2]) - before) / len(queries) * 1000


# The served search's shape (embeddings/vectors/search.py): the user's seen items skipped inside the
# index scan, which pgvector >= 0.8 continues (iterative scan) until LIMIT rows pass the filter.
SERVED = """
    SELECT v.item_id FROM {table} v
    WHERE v.embedding IS NOT NULL AND v.item_id NOT IN (SELECT item_id FROM recsys_interaction WHERE user_id = %s)
    ORDER BY v.embedding <#> %s LIMIT {k}
"""


def exact_top_unseen(items: np.ndarray, ids: np.ndarray, queries: np.ndarray, seen: list[set[int]]) -> list[set[int]]:
    """The exact top K of each query among the items its user has not interacted with."""
    scores = queries @ items.T
    answers = []
    for row, skip in zip(scores, seen, strict=True):
        order = np.argsort(-row)
        answers.append(set([int(i) for i in ids[order] if int(i) not in skip][:K]))
    return answers


def served(
    conn: psycopg.Connection, table: str, users: list[int], queries: np.ndarray, ef: int
) -> tuple[list[set[int]], float]:
    """The served search (seen items skipped, iterative scan) at ``ef``; its answers and the
    backend's CPU ms per search."""
    conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', false)")
    conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])
    backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    statement = SERVED.format(table=table, k=K)
    for user, query in list(zip(users, queries, strict=True))[:20]:  # warm: the plan and the index pages
        conn.execute(statement, [user, query], prepare=True).fetchall()
    before = sum(backend.cpu_times()[:2])
    answers = [
        {r[0] for r in conn.execute(statement, [user, query], prepare=True).fetchall()}
        for user, query in zip(users, queries, strict=True)
    ]
    cpu_ms = (sum(backend.cpu_times()[:2]) - before) / len(queries) * 1000
    conn.execute("SELECT set_config('hnsw.iterative_scan', 'off', false)")
    return answers, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", required=True, help="a kept benchmark database (bench/serve.py --reuse)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef", type=int, nargs="+", default=[20, 40, 64, 100, 200])
    args = parser.parse_args()
    with psycopg.connect(database_url(args.database), autocommit=True) as conn:
        register_vector(conn)
        version = active_version(conn)
        item_table, user_table = f"embeddings_v{version}_item", f"embeddings_v{version}_user"
        rows = conn.execute(f"SELECT item_id, embedding FROM {item_table} WHERE embedding IS NOT NULL").fetchall()
        ids = np.array([r[0] for r in rows])
        items = np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)
        sample = conn.execute(f"SELECT user_id, embedding FROM {user_table} ORDER BY random() LIMIT %s", [args.queries])
        users, vectors = zip(*sample, strict=True)
        queries = np.stack([v.to_numpy() for v in vectors]).astype(np.float32)
        truth = exact_top(items, ids, queries)
        seen = [
            {r[0] for r in conn.execute("SELECT item_id FROM recsys_interaction WHERE user_id = %s", [user])}
            for user in users
        ]
        truth_unseen = exact_top_unseen(items, ids, queries, seen)
        started = time.perf_counter()
        results = []
        for ef in args.ef:
            answers, cpu_ms = searched(conn, item_table, queries, ef)
            recall = np.mean([len(a & t) / K for a, t in zip(answers, truth, strict=True)])
            answers, served_ms = served(conn, item_table, list(users), queries, ef)
            served_recall = np.mean([len(a & t) / K for a, t in zip(answers, truth_unseen, strict=True)])
            results.append((ef, recall, cpu_ms, served_recall, served_ms))
            print(
                f"ef_search {ef}: recall@{K} {recall:.4f}, PostgreSQL CPU {cpu_ms:.2f} ms/search; served "
                f"(seen skipped) {served_recall:.4f}, {served_ms:.2f} ms/search",
                flush=True,
            )
    report(args, len(ids), items.shape[1], results, time.perf_counter() - started)


def report(args, n_items, dims, results, seconds) -> None:  # type: ignore[no-untyped-def]
    load = os.getloadavg()[0]
    lines = [
        "## HNSW ef_search: recall against CPU (`bench/ann_recall.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (load average {load:.1f}); database "
        f"`{args.database}`, {n_items:,} item vectors of {dims} dimensions, HNSW (pgvector, inner product); "
        f"{args.queries:,} random users' stored vectors as queries. recall@{K}: the share of the exact top "
        f"{K} (numpy, every item) that the index search returns; CPU: the PostgreSQL backend's user + system "
        f"time per search (prepared statement, one connection, after a warm-up). *Served*: the search as "
        f"served (the user's seen items skipped inside the index scan, iterative scans on), against the exact "
        f"top {K} of the items the user has not seen.",
        "",
        f"| ef_search | recall@{K} | PostgreSQL CPU per search | served: recall@{K} | served: CPU per search |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {ef} | {recall:.4f} | {cpu:.2f} ms | {served_recall:.4f} | {served_ms:.2f} ms |"
            for ef, recall, cpu, served_recall, served_ms in results
        ),
    ]
    write_section("ann-recall", "\n".join(lines))
    print("\n".join(lines), f"\n({seconds:.0f} s)")


if __name__ == "__main__":
    main()
