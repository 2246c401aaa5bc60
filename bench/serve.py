"""Serving latency and throughput: personalised recommendations and similar items under
concurrent load from separate client processes on loopback, against gunicorn as deployed,
beside the floor: the bare pgvector query for the same vectors.

    python -m recsys.run exec -- python bench/serve.py                  # ml-latest-small
    python -m recsys.run exec -- python bench/serve.py --generated 100000 10000000
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MOVIELENS,
    api_key,
    celery_worker,
    drop_database,
    gunicorn,
    machine,
    manage,
    scratch_database_url,
    write_section,
)
from quality import Api, train

PORT = 8767


def load_data(url: str, generated: tuple[int, int] | None) -> str:
    if generated is None:
        manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
        return f"ml-latest-small ({MOVIELENS.name})"
    items, interactions = generated
    manage(
        url,
        "generate_demo_data",
        "--items",
        str(items),
        "--users",
        str(max(1000, interactions // 100)),
        "--interactions",
        str(interactions),
        "--no-progress",
    )
    return f"generated: {items:,} items, {interactions:,} interactions"


def ids(url: str, table: str, limit: int = 5000) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT external_id FROM recsys_{table} ORDER BY random() LIMIT %s", [limit])
        return [r[0] for r in rows]


def client(port: int, key: str, paths: list[str], seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}"}
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    rng = random.Random()
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        conn.request("GET", rng.choice(paths), headers=headers)
        answer = conn.getresponse()
        answer.read()
        latencies.append(time.perf_counter() - started)
        errors += answer.status != 200
    out.put((latencies, errors))


def load(port: int, key: str, paths: list[str], clients: int, seconds: float) -> dict[str, float]:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=client, args=(port, key, paths, seconds, out)) for _ in range(clients)]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(x for lats, _ in results for x in lats)
    return {
        "rps": len(latencies) / seconds,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": sum(e for _, e in results),
        "requests": len(latencies),
    }


def sql_floor(url: str, version: int, samples: int = 500) -> dict[str, float]:
    """The same nearest-neighbour search as one bare SQL statement on an open connection."""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        vectors = [
            r[0]
            for r in conn.execute(
                f"SELECT embedding FROM embeddings_v{int(version)}_user ORDER BY random() LIMIT %s", [samples]
            )
        ]
        latencies = []
        for vector in vectors:
            started = time.perf_counter()
            conn.execute(
                f"SELECT item_id FROM embeddings_v{int(version)}_item ORDER BY embedding <#> %s LIMIT 10", [vector]
            ).fetchall()
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"p50": statistics.median(latencies) * 1000, "p99": latencies[int(len(latencies) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generated", nargs=2, type=int, metavar=("ITEMS", "INTERACTIONS"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    generated = tuple(args.generated) if args.generated else None
    url = scratch_database_url("recsys_bench_serve")
    try:
        started = time.perf_counter()
        dataset = load_data(url, generated)
        load_s = time.perf_counter() - started
        with celery_worker(url, "serve"), gunicorn(url, PORT) as master:
            key = api_key(url)
            api = Api(key, PORT)
            version = train(api)
            users, items = ids(url, "user"), ids(url, "item")
            results = {
                "personalised": load(
                    PORT,
                    key,
                    [f"/api/v1/users/{u}/recommendations?limit=10" for u in users],
                    args.clients,
                    args.seconds,
                ),
                "similar": load(
                    PORT, key, [f"/api/v1/items/{i}/similar?limit=10" for i in items], args.clients, args.seconds
                ),
            }
            workers = len(master.children())
        floor = sql_floor(url, version["version"])
    finally:
        drop_database(url)
    report(dataset, load_s, version, results, floor, workers, args)


def report(dataset, load_s, version, results, floor, workers, args) -> None:  # type: ignore[no-untyped-def]
    name = "serve-generated" if args.generated else "serve-movielens"
    lines = [
        f"## Serving latency, {dataset} (`bench/serve.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; gunicorn with {workers} sync workers, "
        f"{args.clients} client processes on loopback for {args.seconds:.0f} s per endpoint, keep-alive, random "
        f"users/items; model v{version['version']} ({version['algorithm']}, {version['dimensions']}-d, trained "
        f"on the worker in {sum(version['timings'].values()):.0f} s: {version['timings']}); data loaded in "
        f"{load_s:.0f} s.",
        "",
        "| endpoint | req/s | p50 | p99 | errors | p50 / bare SQL p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for endpoint, r in results.items():
        lines.append(
            f"| {endpoint} | {r['rps']:,.0f} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['errors']} | "
            f"{r['p50'] / floor['p50']:.1f}× |"
        )
    lines += [
        "",
        f"Bare SQL floor (one `ORDER BY embedding <#> $1 LIMIT 10` on an open connection, no filters): "
        f"p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms. Targets at 100k items: p50 ≤ 10 ms, "
        f"p99 ≤ 30 ms.",
    ]
    write_section(name, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
