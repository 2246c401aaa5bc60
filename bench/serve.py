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
import os
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import (
    MOVIELENS,
    api_key,
    celery_worker,
    database_recreate,
    database_url,
    drop_database,
    generated_load,
    gunicorn,
    machine,
    manage,
    tree_rss_mb,
    vacuum_analyze,
    write_section,
)
from quality import Api, train

PORT = 8767


def load_data(url: str, generated: tuple[int, int] | None) -> str:
    if generated is None:
        manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
        return f"ml-latest-small ({MOVIELENS.name})"
    items, interactions = generated
    generated_load(url, items, interactions)
    return f"generated: {items:,} items, {interactions:,} interactions"


def ids(url: str, table: str, limit: int = 5000) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT external_id FROM recsys_{table} ORDER BY random() LIMIT %s", [limit])
        return [r[0] for r in rows]


def client(port: int, key: str, paths: list[str], seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: dict[int, int] = {}  # status → answers other than 200
    deadline = time.perf_counter() + seconds
    rng = random.Random()
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        conn.request("GET", rng.choice(paths), headers=headers)
        answer = conn.getresponse()
        answer.read()
        latencies.append(time.perf_counter() - started)
        if answer.status != 200:
            errors[answer.status] = errors.get(answer.status, 0) + 1
    out.put((latencies, errors))


def load(
    port: int, key: str, paths: list[str], clients: int, seconds: float, servers: dict[str, psutil.Process]
) -> dict[str, float]:
    """Latency and throughput of ``clients`` concurrent clients, and the CPU each server process tree
    (``servers``: web, PostgreSQL) spent per request meanwhile, in ms."""
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=client, args=(port, key, paths, seconds, out)) for _ in range(clients)]
    before = {name: tree_cpu_seconds(root) for name, root in servers.items()}
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    spent = {name: tree_cpu_seconds(root) - before[name] for name, root in servers.items()}
    for proc in procs:
        proc.join()
    latencies = sorted(x for lats, _ in results for x in lats)
    return {
        "rps": len(latencies) / seconds,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": sum(sum(e.values()) for _, e in results),
        "statuses": {
            code: sum(e.get(code, 0) for _, e in results) for code in sorted({c for _, e in results for c in e})
        },
        "requests": len(latencies),
        "load": os.getloadavg()[0],
        **{f"cpu_{name}": cpu / len(latencies) * 1000 for name, cpu in spent.items()},
    }


def tree_cpu_seconds(root: psutil.Process) -> float:
    """CPU time (user + system) of a process tree: its live members, plus the children the root
    has already reaped (a recycled gunicorn worker, a closed PostgreSQL backend)."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:  # exited meanwhile: its time moves to the root's reaped children
            continue
        total += times.user + times.system
    times = root.cpu_times()
    return total + times.children_user + times.children_system


def postmaster(url: str) -> psutil.Process:
    """The PostgreSQL server's main process (the parent of every backend)."""
    import psycopg

    with psycopg.connect(url) as conn:  # the backend exits with its connection: ask while it lives
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return psutil.Process(backend).parent()


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


class PeakMemory:
    """Samples a process tree's RSS in a thread; ``peak_mb`` is the largest sum seen."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.root, self.every, self.peak_mb = psutil.Process(pid), every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, tree_rss_mb(self.root))
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def database_ready(url: str) -> bool:
    """Whether a kept database already holds the data (``--reuse``)."""
    import psycopg

    try:
        with psycopg.connect(url) as conn:
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM recsys_interaction)").fetchone()[0])
    except psycopg.Error:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generated", nargs=2, type=int, metavar=("ITEMS", "INTERACTIONS"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep the scratch database and reuse its data next time")
    parser.add_argument("--database", help="the scratch database's name (on a shared server, a name of your own)")
    parser.add_argument("--retrain", action="store_true", help="with --reuse: train a new version on the kept data")
    parser.add_argument(
        "--server",
        nargs="+",
        default=["sync"],
        help="web server shapes to measure, each in the same run: sync (the default GUNICORN_WORKER: "
        "recsys.web_worker's sync workers, a connection per request), threads:PROCESSES:THREADS "
        "(GUNICORN_WORKER=threads: recsys.web_worker's threaded worker, HTTP keep-alive: the clients keep "
        "their connection) or gthread:PROCESSES:THREADS (gunicorn's own threaded worker, without the deadlines)",
    )
    args = parser.parse_args()
    shapes = {shape: server_shape(shape) for shape in args.server}
    generated = tuple(args.generated) if args.generated else None
    name = args.database or "recsys_bench_serve" + (f"_{generated[0]}_{generated[1]}" if generated else "")
    url = database_url(name)
    reused = args.reuse and database_ready(url)
    if reused:
        manage(url, "migrate", "--no-input", "-v", "0")  # the kept database may predate a migration
    else:
        url = database_recreate(name)
    try:
        started = time.perf_counter()
        dataset = describe(generated) if reused else load_data(url, generated)
        load_s = time.perf_counter() - started
        with celery_worker(url, "serve") as worker:
            key = api_key(url)
            with gunicorn(url, PORT) as master, PeakMemory(worker.pid) as memory:
                version = (reused and not args.retrain and active_model(Api(key, PORT))) or train(Api(key, PORT))
            vacuum_analyze(url)  # as autovacuum would after the load and the training (off on the shared server)
            database = postmaster(url)
            users, items = ids(url, "user"), ids(url, "item")
            paths = {
                "personalised": [f"/api/v1/users/{u}/recommendations?limit=10" for u in users],
                "similar": [f"/api/v1/items/{i}/similar?limit=10" for i in items],
            }
            results = {}
            # uncached: a server with the answer cache off computes every answer; cached: the
            # deployed default, asked about 200 hot users / items over and over.
            workers = {}
            for shape, (options, shape_env) in shapes.items():
                for answers, env in (("uncached", {"RECSYS_ANSWER_CACHE_SECONDS": "0"}), ("cached", {})):
                    with gunicorn(url, PORT, env={**env, **shape_env}, options=options) as master:
                        for endpoint, endpoint_paths in paths.items():
                            hot = endpoint_paths if answers == "uncached" else endpoint_paths[:200]
                            for clients in args.clients:
                                servers = {"web": master, "pg": database}
                                row = load(PORT, key, hot, clients, args.seconds, servers)
                                results[(shape, endpoint, clients, answers)] = row
                        workers[shape] = len(master.children())
        floor = sql_floor(url, version["version"])
    finally:
        if not args.reuse:
            drop_database(url)
    report(dataset, load_s, version, memory.peak_mb, results, floor, workers, args)


def server_shape(shape: str) -> tuple[list[str], dict[str, str]]:
    """gunicorn options and environment for a ``--server`` shape (sync: gunicorn.conf.py's defaults)."""
    if shape == "sync":
        return [], {}
    kind, processes, threads = shape.split(":")
    if kind == "threads":
        return [], {"GUNICORN_WORKER": "threads", "WEB_CONCURRENCY": processes, "GUNICORN_THREADS": threads}
    if kind == "gthread":
        return ["--worker-class", "gthread", "--workers", processes, "--threads", threads, "--keep-alive", "10"], {}
    raise SystemExit(f"unknown server shape {shape!r}: sync, threads:PROCESSES:THREADS or gthread:PROCESSES:THREADS")


def shape_label(shape: str, workers: int) -> str:
    if shape == "sync":
        return f"sync, {workers} workers (the default)"
    kind, processes, threads = shape.split(":")
    if kind == "threads":
        return f"threads (GUNICORN_WORKER=threads), {processes} × {threads}, keep-alive"
    return f"gunicorn's gthread, {processes} × {threads}, keep-alive"


def active_model(api: Api) -> dict | None:  # type: ignore[type-arg]
    """The active collaborative version of a kept database (``--reuse``): no need to train again."""
    versions = api.call("GET", "/api/v1/models?kind=collaborative")
    return next((v for v in versions if v["status"] == "active"), None)  # type: ignore[attr-defined]


def describe(generated: tuple[int, int] | None) -> str:
    if generated is None:
        return f"ml-latest-small ({MOVIELENS.name})"
    return f"generated: {generated[0]:,} items, {generated[1]:,} interactions"


def report(dataset, load_s, version, peak_mb, results, floor, workers, args) -> None:  # type: ignore[no-untyped-def]
    name = "serve-generated" if args.generated else "serve-movielens"
    counts = version.get("counts", {})
    servers = ", ".join(shape_label(shape, n) for shape, n in workers.items())
    lines = [
        f"## Serving latency, {dataset} (`bench/serve.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; gunicorn ({servers}); client processes on "
        "loopback (sharing the 2 cores with the server, PostgreSQL and Redis) for "
        f"{args.seconds:.0f} s per row (sync: a new connection per request, as sync workers close each one; "
        f"threads: each client keeps its connection), random users/items; data loaded in {load_s:.0f} s.",
        "",
        f"Training on the worker (through `POST /models/train`): model v{version['version']} "
        f"({version['algorithm']}, {version['dimensions']}-d) on {counts}, "
        f"{sum(version['timings'].values()):.0f} s in all ({version['timings']}); peak worker RSS "
        f"{peak_mb:,.0f} MiB.",
        "",
        f"| {'server | ' if len(workers) > 1 else ''}endpoint | clients | answers | req/s | p50 | p99 | errors "
        "| p50 / bare SQL p50 | CPU per request: web + PostgreSQL | req/s per core | load average |",
        f"|{'---|' if len(workers) > 1 else ''}---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (shape, endpoint, clients, cache), r in results.items():
        cpu = r["cpu_web"] + r["cpu_pg"]
        server = f"{shape_label(shape, workers[shape])} | " if len(workers) > 1 else ""
        statuses = ", ".join(f"{code}: {n}" for code, n in r["statuses"].items())
        lines.append(
            f"| {server}{endpoint} | {clients} | {cache} | {r['rps']:,.0f} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | "
            f"{r['errors']}{f' ({statuses})' if statuses else ''} | {r['p50'] / floor['p50']:.1f}× | "
            f"{r['cpu_web']:.2f} + {r['cpu_pg']:.2f} = {cpu:.2f} ms | {1000 / cpu:,.0f} | {r['load']:.1f} |"
        )
    lines += [
        "",
        f"Bare SQL floor (one `ORDER BY embedding <#> $1 LIMIT 10` on an open connection, no filters): "
        f"p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms. Targets at 100k items: p50 ≤ 10 ms, "
        f"p99 ≤ 30 ms, single-client uncached personalised p50 ≤ 5× the bare SQL p50, ≤ 2 ms CPU per "
        f"uncached personalised request. *uncached*: every request computed (answer cache off); *cached*: "
        f"200 hot users/items answered from Redis. CPU per request: user + system time of the gunicorn tree "
        f"and of the PostgreSQL server's tree (backends and background processes) over the row, divided by "
        f"its requests (clients and Redis not counted); req/s per core = 1000 / those ms. Load average: the "
        f"machine's 1-minute figure at the end of the row (other engineers' work included).",
    ]
    write_section(name, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
