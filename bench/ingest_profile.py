"""Where an ingest request of 1,000 rows spends its CPU: in-process WSGI calls (as gunicorn makes them)
against a scratch database, one phase per request kind of ``bench/impressions.py`` (impressions, events
whose clicks are all attributed, events with nothing to attribute). Per 1,000 rows: CPU of this process
and of its PostgreSQL backend, the round trips to PostgreSQL and Redis; a cProfile of the Python side;
EXPLAIN (ANALYZE, BUFFERS) of every statement one request sends, replayed in a rolled-back transaction
with the foreign-key checks made immediate so that their cost shows in the plan.

    python -m recsys.run exec -- python bench/ingest_profile.py [--batches 30] [--no-explain]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import ROOT, database_recreate, drop_database
from impressions import events_body, impression_bodies, unmatched_events_body
from serve_profile import RoundTrips, backend_process, cpu

sys.path.insert(0, str(ROOT))  # serve_profile put bench/ first: its experiments.py would hide the app

PHASES: dict[str, tuple[str, Callable[[int], list[bytes]]]] = {
    "impressions": ("/api/v1/impressions", impression_bodies),
    "events_attributed": ("/api/v1/interactions", events_body),
    "events_plain": ("/api/v1/interactions", unmatched_events_body),
}


def setup(url: str) -> None:
    os.environ.update(
        DATABASE_URL=url,
        RECSYS_INSECURE_DEV_KEY="true",
        DJANGO_SETTINGS_MODULE="recsys.settings",
        DATABASE_CONN_MAX_AGE="3600",  # one backend throughout: its CPU is what is measured
    )
    import django

    django.setup()


def poster(key: str) -> Callable[[str, bytes], tuple[int, bytes]]:
    """One WSGI POST per call, with the environ gunicorn builds."""
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()

    def call(path: str, body: bytes) -> tuple[int, bytes]:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_AUTHORIZATION": f"Bearer {key}",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        status: list[str] = []
        answer = application(environ, lambda s, h, exc_info=None: status.append(s))
        try:
            data = b"".join(answer)
        finally:
            answer.close()  # type: ignore[attr-defined]
        return int(status[0].split()[0]), data

    return call


def checked(status: int, data: bytes) -> None:
    payload = json.loads(data)
    if status != 200 or payload.get("errors") or payload.get("created") != 1000:
        raise RuntimeError(f"unexpected answer {status}: {data[:300]!r}")


def measure(call: Callable[[str, bytes], tuple[int, bytes]], path: str, bodies: list[bytes]) -> dict[str, float]:
    backend, me = backend_process(), psutil.Process()
    web, pg, started = cpu(me), cpu(backend), time.perf_counter()
    for body in bodies:
        checked(*call(path, body))
    if backend_process().pid != backend.pid:
        raise RuntimeError("the database connection was replaced during the measurement")
    per = 1000 / (len(bodies) * 1000)  # ms per 1,000 rows: every body is 1,000 rows
    return {
        "web_ms": (cpu(me) - web) * 1000 * per,
        "pg_ms": (cpu(backend) - pg) * 1000 * per,
        "wall_ms": (time.perf_counter() - started) * 1000 * per,
    }


def _on_cpu_ns(pid: int | None = None) -> int:
    """Nanoseconds of CPU a process (None: this thread) has used: Linux's per-process CPU clock, exact where
    cpu_times() counts 10 ms ticks (a statement takes a few ms)."""
    if pid is None:
        return time.thread_time_ns()
    return time.clock_gettime_ns(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def statement_cpu(call: Callable[[str, bytes], tuple[int, bytes]], path: str, bodies: list[bytes]) -> dict:
    """CPU of PostgreSQL's backend and of this process per statement (and per commit), ms per 1,000 rows."""
    import psycopg
    from django.db import connection

    backend = backend_process().pid
    spent: dict[str, list[float]] = {}
    execute = psycopg.Cursor.execute

    def timed(label: str, work: Callable[[], Any]) -> Any:
        web, pg = _on_cpu_ns(), _on_cpu_ns(backend)
        try:
            return work()
        finally:
            entry = spent.setdefault(label, [0.0, 0.0])
            entry[0] += _on_cpu_ns() - web
            entry[1] += _on_cpu_ns(backend) - pg

    def counted(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(cursor.connection) if hasattr(query, "as_string") else str(query)
        return timed(" ".join(text.split())[:90], lambda: execute(cursor, query, params, **kwargs))

    commit = connection._commit
    connection._commit = lambda: timed("COMMIT", commit)  # type: ignore[method-assign]
    psycopg.Cursor.execute = counted  # type: ignore[method-assign]
    try:
        for body in bodies:
            checked(*call(path, body))
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        del connection._commit
    per = 1e6 * len(bodies)  # ns -> ms per 1,000 rows (a body is 1,000 rows)
    return {label: (web / per, pg / per) for label, (web, pg) in spent.items()}


def explain(path: str, body: bytes) -> str:
    """The statements one request sends, each under EXPLAIN (ANALYZE, BUFFERS) in the state it met."""
    import psycopg
    from django.db import connection, transaction

    from api.views import clean_batch
    from recsys import services
    from recsys.ingestion.writer import ids_resolve
    from recsys.models import Item, User

    rows = clean_batch(json.loads(body), path.rsplit("/", 1)[1], max_rows=10_000)
    impressions = path.endswith("impressions")
    service = services.impressions_ingest if impressions else services.interactions_ingest
    # Users and items exist beforehand (committed), so that the replay's ids are the captured ones.
    ids_resolve(model=User, external_ids={row["user"] for row in rows}, create=True)
    items = {item for row in rows for item in row["items"]} if impressions else {row["item"] for row in rows}
    ids_resolve(model=Item, external_ids=items, create=True)
    captured: list[tuple[Any, Any]] = []
    execute = psycopg.Cursor.execute

    def capture(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        captured.append((query, params))
        return execute(cursor, query, params, **kwargs)

    with transaction.atomic():
        psycopg.Cursor.execute = capture  # type: ignore[method-assign]
        try:
            service(rows=rows)
        finally:
            psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        transaction.set_rollback(True)
    out = []
    with transaction.atomic():
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for query, params in captured:
                text = query.as_string(connection.connection) if hasattr(query, "as_string") else str(query)
                if text.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "SET ", "ROLLBACK")):
                    continue
                plan = execute(cursor, "EXPLAIN (ANALYZE, BUFFERS) " + text, params).fetchall()
                out.append(" ".join(text.split())[:110] + "\n" + "\n".join("    " + r[0] for r in plan))
        transaction.set_rollback(True)
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="requests of 1,000 rows per phase")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-explain", action="store_true")
    args = parser.parse_args()
    url = database_recreate("recsys_profile_ingest")
    try:
        setup(url)
        run(args)
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(url)


def run(args: argparse.Namespace) -> None:
    from recsys.api_keys import api_key_create

    _, key = api_key_create(name="profile", scopes=["read", "write"], rate_limit="1000000/min")
    call = poster(key)
    for seed in range(9_000, 9_004):  # warm: imports, the connection, caches (timestamps in 2020)
        for path, make in PHASES.values():
            for body in make(seed):
                checked(*call(path, body))
    seeds = list(range(10_000, 10_000 + args.batches))
    bodies = {phase: [b for seed in seeds for b in make(seed)] for phase, (_, make) in PHASES.items()}
    n = args.batches
    figures, profiles, trips = {}, {}, {}
    breakdowns = {}
    for phase, (path, _) in PHASES.items():
        third = len(bodies[phase]) // 3
        figures[phase] = measure(call, path, bodies[phase][:third])
        counter = RoundTrips()
        counter.install()
        checked(*call(path, bodies[phase][third]))
        counter.uninstall()
        trips[phase] = (dict(counter.sql), dict(counter.redis))
        breakdowns[phase] = statement_cpu(call, path, bodies[phase][third + 1 : 2 * third])
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for body in bodies[phase][2 * third :]:
            checked(*call(path, body))
        profiler.disable()
        profiles[phase] = profiler
    load = os.getloadavg()[0]
    print(f"In-process WSGI, requests of 1,000 rows one after another (load average {load:.1f}):")
    for phase, f in figures.items():
        print(
            f"  {phase:18} CPU per 1,000 rows: web {f['web_ms']:.1f} ms + PostgreSQL {f['pg_ms']:.1f} ms "
            f"= {f['web_ms'] + f['pg_ms']:.1f} ms (wall {f['wall_ms']:.1f} ms)"
        )
    for phase, rows in breakdowns.items():
        print(f"\n{phase}: CPU per 1,000 rows by statement (ms; the commit runs the deferred foreign-key checks)")
        for label, (web, pg) in sorted(rows.items(), key=lambda item: -item[1][1]):
            print(f"    PostgreSQL {pg:6.2f}  web {web:6.2f}  {label}")
    for phase, (sql, redis) in trips.items():
        print(f"\n{phase}: {sum(sql.values())} PostgreSQL round trips, {sum(redis.values())} Redis")
        for text, count in sql.items():
            print(f"    {count} × {text}")
        for text, count in redis.items():
            print(f"    {count} × {text[:120]}")
    for phase, profiler in profiles.items():
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        print(f"\ncProfile of {phase} (CPU of the web process), by tottime:")
        print(out.getvalue().split("\n", 6)[-1])
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
        print(f"\ncProfile of {phase}, by cumulative:")
        print(out.getvalue().split("\n", 6)[-1])
    if not args.no_explain:
        seed = 10_000 + n + 1  # fresh: its impressions are explained, then stored, then its events explained
        for phase, (path, make) in PHASES.items():
            print(f"\nPlans of one {phase} request (FK checks immediate):\n" + explain(path, make(seed)[0]))
            if phase == "impressions":
                for body in make(seed):
                    checked(*call(path, body))


if __name__ == "__main__":
    main()
