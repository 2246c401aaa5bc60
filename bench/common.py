"""Shared helpers of the benchmarks: a scratch database, a gunicorn server, BENCHMARKS.md sections."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks run as scripts: make the project importable
from recsys.run import celery_worker_command  # noqa: E402

BENCHMARKS = ROOT / "BENCHMARKS.md"
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-latest-small"


def database_recreate(name: str) -> str:
    """Drop database ``name`` if it exists (its data is lost), create it again beside the configured
    one and migrate it; its URL. To use a kept database as it is, ``database_url``."""
    base = os.environ["DATABASE_URL"]
    parts = urlsplit(base)
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = parts._replace(path=f"/{name}").geturl()
    manage(url, "migrate", "--no-input", "-v", "0")
    return url


def database_url(name: str) -> str:
    """The configured server's URL with database ``name`` (which may not exist yet)."""
    return urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}").geturl()


def drop_database(url: str) -> None:
    parts = urlsplit(url)
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def vacuum_analyze(database_url: str) -> None:
    """VACUUM (ANALYZE) the benchmark database, as autovacuum would after a bulk load: planner
    statistics, and visibility maps that let the seen-items lookup use index-only scans. The
    shared benchmark server runs with autovacuum off, and a freshly loaded database measured as it
    is paid ~0.5 ms of PostgreSQL CPU per recommendation on heap visits (bench/serve_profile.py)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def bench_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=database_url, RECSYS_INSECURE_DEV_KEY="true", **extra)
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    return env


def manage(database_url: str, *args: str, capture: bool = False) -> str:
    answer = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=bench_env(database_url),
        cwd=ROOT,
        check=True,
        capture_output=capture,
        text=True,
    )
    return answer.stdout if capture else ""


def generated_load(database_url: str, items: int, interactions: int) -> None:
    """Generated demo data of that size (a user per 100 interactions, at least 1,000 users)."""
    manage(
        database_url,
        "generate_demo_data",
        "--items",
        str(items),
        "--users",
        str(max(1000, interactions // 100)),
        "--interactions",
        str(interactions),
        "--no-progress",
    )


def api_key(database_url: str) -> str:
    return manage(
        database_url,
        "create_api_key",
        "--name",
        "bench",
        "--scopes",
        "read,write,admin",
        "--rate-limit",
        "1000000/min",
        "--quiet",
        capture=True,
    ).strip()


@contextmanager
def gunicorn(
    database_url: str,
    port: int,
    workers: int | None = None,
    env: dict[str, str] | None = None,
    options: Sequence[str] = (),
) -> Iterator[psutil.Process]:
    """gunicorn as deployed (gunicorn.conf.py), on loopback; yields its master process. ``options``:
    gunicorn command-line options over the configuration file's (a measured alternative, not the
    deployed shape)."""
    extra = {"WEB_CONCURRENCY": str(workers)} if workers else {}
    extra.update(env or {})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "-b",
            f"127.0.0.1:{port}",
            *options,
            "recsys.wsgi:application",
        ],
        env=bench_env(database_url, **extra),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(port)
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@contextmanager
def celery_worker(database_url: str, name: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker (one process) on every queue, against the scratch database. The queues are
    emptied first: every benchmark shares the services' Redis, and tasks another benchmark left (a
    content build's next encode slice, for its own scratch database) would run here meanwhile."""
    queues = "training,realtime,maintenance,default"
    purge = [sys.executable, "-m", "celery", "-A", "recsys", "purge", "-f", "-Q", queues]
    subprocess.run(purge, env=bench_env(database_url), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    worker = subprocess.Popen(
        celery_worker_command(name, level="warning", concurrency=1),
        env=bench_env(database_url, **(env or {})),
        cwd=ROOT,
    )
    try:
        yield worker
    finally:
        worker.terminate()  # a warm shutdown waits for the running task
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a long build: stop it rather than hide why the bench ended
            worker.kill()
            worker.wait(timeout=30)


def wait_healthy(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server did not start")


def postgres_cpu_seconds(database_url: str) -> float:
    """CPU seconds (user + system) the PostgreSQL server has used so far: the postmaster, its live processes
    and the backends it has reaped. On this shared machine CPU time is the figure that load does not bend."""
    with psycopg.connect(database_url) as conn:
        backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        postmaster = backend.parent()
        assert postmaster is not None
        return tree_cpu_seconds(postmaster)  # its backends and background processes have no children


def tree_cpu_seconds(master: psutil.Process) -> float:
    """CPU seconds (user + system) of a process tree so far: the master, its live descendants, and the
    children it has reaped (a recycled gunicorn worker)."""
    own = master.cpu_times()
    total = own.user + own.system + own.children_user + own.children_system
    for child in master.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def redis_cpu_seconds() -> float:
    """CPU seconds the Redis server of REDIS_URL has used so far (its INFO); 0 without REDIS_URL."""
    import redis

    url = os.environ.get("REDIS_URL")
    if not url:
        return 0.0
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def tree_rss_mb(master: psutil.Process) -> float:
    processes = [master, *master.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20


def section_read(name: str) -> str | None:
    """The body between the markers named ``name`` in BENCHMARKS.md, or None."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    match = re.search(re.escape(start) + "\n?(.*?)" + re.escape(end), text, re.S)
    return match.group(1) if match else None


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between markers named ``name`` in BENCHMARKS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nFigures written by `bench/*.py`.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    BENCHMARKS.write_text(text)


def machine() -> str:
    return f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
