"""Where an uncached personalised request spends its time: in-process WSGI calls (as gunicorn makes
them) against a kept benchmark database, with CPU per request (this process and its PostgreSQL
backend), round trips to PostgreSQL and Redis, and a cProfile of the Python side.

    python -m recsys.run exec -- python bench/serve_profile.py --database recsys_bench_serve_100000_10000000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import database_url, vacuum_analyze

TRIPS_SAMPLE = 100  # requests whose round trips are counted


def setup(database: str) -> None:
    os.environ.update(
        DATABASE_URL=database_url(database),
        RECSYS_INSECURE_DEV_KEY="true",
        RECSYS_ANSWER_CACHE_SECONDS="0",
        RECSYS_SERVING_STATEMENT_TIMEOUT_MS="2000",  # as gunicorn.conf.py sets it
        DJANGO_SETTINGS_MODULE="recsys.settings",
    )
    import django

    django.setup()


class RoundTrips:
    """Counts statements sent to PostgreSQL and commands (or pipelines) sent to Redis."""

    def __init__(self) -> None:
        self.sql: Counter[str] = Counter()
        self.redis: Counter[str] = Counter()

    def install(self) -> None:
        import psycopg
        import redis

        trips = self
        execute, command, pipeline = psycopg.Cursor.execute, redis.Redis.execute_command, redis.client.Pipeline.execute

        def counted_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text = query.as_string(cursor.connection) if hasattr(query, "as_string") else str(query)
            trips.sql[" ".join(text.split())[:90]] += 1
            return execute(cursor, query, *args, **kwargs)

        def counted_command(client: Any, *args: Any, **kwargs: Any) -> Any:
            trips.redis[str(args[0])] += 1
            return command(client, *args, **kwargs)

        def counted_pipeline(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            trips.redis["pipeline(" + ",".join(str(c[0][0]) for c in pipe.command_stack) + ")"] += 1
            return pipeline(pipe, *args, **kwargs)

        psycopg.Cursor.execute = counted_execute  # type: ignore[method-assign]
        redis.Redis.execute_command = counted_command  # type: ignore[method-assign]
        redis.client.Pipeline.execute = counted_pipeline  # type: ignore[method-assign]
        self.originals = (execute, command, pipeline)

    def uninstall(self) -> None:
        """Put the originals back: the counting itself must not be profiled (psycopg's as_string alone
        cost more than a round trip, and inflated the search's and the throttle's share)."""
        import psycopg
        import redis

        execute, command, pipeline = self.originals
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        redis.Redis.execute_command = command  # type: ignore[method-assign]
        redis.client.Pipeline.execute = pipeline  # type: ignore[method-assign]

    def clear(self) -> None:
        self.sql.clear()
        self.redis.clear()


def caller(key: str) -> Callable[[str], tuple[int, bytes]]:
    """One WSGI call per path, with the environ gunicorn builds (a new HTTP connection each time)."""
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()

    def call(path: str) -> tuple[int, bytes]:
        route, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": route,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_AUTHORIZATION": f"Bearer {key}",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        status: list[str] = []
        body = application(environ, lambda s, h, exc_info=None: status.append(s))
        try:
            data = b"".join(body)
        finally:
            body.close()  # type: ignore[attr-defined]  # request_finished, as gunicorn sends it
        return int(status[0].split()[0]), data

    return call


def backend_process() -> psutil.Process:
    """This process's PostgreSQL backend (Django's connection, kept open by CONN_MAX_AGE)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return psutil.Process(cursor.fetchone()[0])


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(call: Callable[[str], tuple[int, bytes]], paths: list[str]) -> dict[str, float]:
    """Wall and CPU time per request; the backend must stay the same connection throughout."""
    backend = backend_process()
    me = psutil.Process()
    web_before, pg_before = cpu(me), cpu(backend)
    latencies = []
    for path in paths:
        started = time.perf_counter()
        status, body = call(path)
        latencies.append(time.perf_counter() - started)
        assert status == 200, (status, body[:300])
    if backend_process().pid != backend.pid:
        raise RuntimeError("the database connection was replaced during the measurement")
    n = len(paths)
    return {
        "p50": statistics.median(latencies) * 1000,
        "web_cpu": (cpu(me) - web_before) / n * 1000,
        "pg_cpu": (cpu(backend) - pg_before) / n * 1000,
    }


def explain(user: str) -> str:
    """EXPLAIN ANALYZE of the statements one personalised request sends, captured as it runs them."""
    import psycopg

    captured: list[tuple[Any, Any]] = []
    execute = psycopg.Cursor.execute

    def capture(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        captured.append((cursor.connection, query, params))
        return execute(cursor, query, params, **kwargs)

    from embeddings.recommendations import user_recommendations_list

    psycopg.Cursor.execute = capture  # type: ignore[method-assign]
    try:
        user_recommendations_list(user_external_id=user, limit=10)
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    out = []
    for conn, query, params in captured:
        text = query.as_string(conn) if hasattr(query, "as_string") else str(query)
        if not text.lstrip().upper().startswith(("SELECT", "WITH")) or "set_config" in text:
            continue
        with psycopg.Cursor(conn) as cursor:
            statement = (
                query if hasattr(query, "as_string") else psycopg.sql.SQL(query)
            )  # a composed statement, or text
            plan = cursor.execute(psycopg.sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement, params).fetchall()
        out.append(" ".join(text.split())[:100] + "\n" + "\n".join("    " + r[0] for r in plan))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", required=True, help="a kept benchmark database (bench/serve.py --reuse)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    vacuum_analyze(database_url(args.database))  # as autovacuum would have; quick once done
    setup(args.database)
    from recsys.api_keys import api_key_create
    from recsys.models import User

    _, key = api_key_create(name="profile", scopes=["read"], rate_limit="1000000/min")
    users = list(User.objects.order_by("?").values_list("external_id", flat=True)[: args.requests])
    paths = [f"/api/v1/users/{u}/recommendations?limit=10" for u in users]
    call = caller(key)
    for path in paths[:200]:  # warm: imports, the connection, pgvector's types, the active version
        call(path)
    random.shuffle(paths)
    figures = measure(call, paths)
    trips = RoundTrips()
    trips.install()
    for path in paths[:TRIPS_SAMPLE]:  # a sample: the rate limit's claims from Redis come once per batch
        call(path)
    trips.uninstall()
    sql_trips = {text: n / TRIPS_SAMPLE for text, n in trips.sql.items()}
    redis_trips = {text: n / TRIPS_SAMPLE for text, n in trips.redis.items()}
    profiler = cProfile.Profile(time.process_time)  # CPU time: waits on PostgreSQL and Redis count nothing
    profiler.enable()
    for path in paths[: args.requests // 2]:
        call(path)
    profiler.disable()
    report(figures, sql_trips, redis_trips, profiler, args, explain(users[0]))


def report(figures, sql_trips, redis_trips, profiler, args, plans) -> None:  # type: ignore[no-untyped-def]
    load = os.getloadavg()[0]
    print(f"{args.requests} uncached personalised requests, in-process WSGI, one after another (load {load:.1f}):")
    print(
        f"  wall p50 {figures['p50']:.2f} ms; CPU per request: web {figures['web_cpu']:.2f} ms + "
        f"PostgreSQL backend {figures['pg_cpu']:.2f} ms = {figures['web_cpu'] + figures['pg_cpu']:.2f} ms"
    )
    print(f"  PostgreSQL round trips per request (mean of {TRIPS_SAMPLE}): {sum(sql_trips.values()):.2f}")
    for text, n in sql_trips.items():
        print(f"    {n:.2f} × {text}")
    print(f"  Redis round trips per request (mean of {TRIPS_SAMPLE}): {sum(redis_trips.values()):.2f}")
    for text, n in redis_trips.items():
        print(f"    {n:.2f} × {text}")
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.top)
        print(f"\ncProfile (CPU time of the web process) over {args.requests // 2} requests, by {order}:")
        print(out.getvalue().split("\n", 6)[-1])
    print("\nPlans:\n" + plans)


if __name__ == "__main__":
    main()
