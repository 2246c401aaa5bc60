"""Process supervisor behind ``make serve``, ``make demo`` and ``make test``.

It starts the embedded PostgreSQL/Redis when DATABASE_URL/REDIS_URL are unset (and stops only
those it started), passes their URLs to its children, and runs web (gunicorn), Celery worker
and beat in the foreground until Ctrl-C or SIGTERM, when it stops all of them.

    python -m recsys.run serve            # web + worker + beat
    python -m recsys.run demo             # migrate, demo data, train, serve, print curl examples
    python -m recsys.run exec -- CMD ...  # run CMD with the services up (used by make test)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def data_dir() -> Path:
    """The data folder (embedded services, beat's schedule file), created if missing."""
    raw = os.environ.get("RECSYS_DATA_DIR")
    folder = Path(raw).expanduser().resolve() if raw else BASE_DIR / ".data"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def services() -> Iterator[dict[str, str]]:
    """Environment with DATABASE_URL/REDIS_URL set, embedded servers started where needed."""
    env = dict(os.environ)
    folder = data_dir()
    started = []
    if not env.get("DATABASE_URL"):
        was_running = embedded.postgres_running(folder)
        env["DATABASE_URL"] = embedded.postgres_url(folder)
        started += [] if was_running else ["postgres"]
    if not env.get("REDIS_URL"):
        was_running = embedded.redis_running(folder)
        env["REDIS_URL"] = embedded.redis_url(folder)
        started += [] if was_running else ["redis"]
    if started:
        log(f"started embedded {' and '.join(started)} under {folder}")
    try:
        yield env
    finally:
        if "redis" in started:
            embedded.redis_stop(folder)
        if "postgres" in started:
            embedded.postgres_stop(folder)
        if started:
            log(f"stopped embedded {' and '.join(started)}")


def log(message: str) -> None:
    print(f"[recsys] {message}", file=sys.stderr, flush=True)


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], env=env, check=True, cwd=BASE_DIR)


ALL_QUEUES = "default,training,encoding"


def celery_worker_command(
    name: str, *, queues: str = ALL_QUEUES, level: str = "info", concurrency: int = 0
) -> list[str]:
    """The Celery worker command line (``concurrency`` 0 = one process per core)."""
    command = [PYTHON, "-m", "celery", "-A", "recsys", "worker", "-Q", queues, "-l", level, "-n", f"{name}@%h"]
    return [*command, "-c", str(concurrency)] if concurrency else command


def process_commands(port: str) -> dict[str, list[str]]:
    celery = [PYTHON, "-m", "celery", "-A", "recsys"]
    return {
        "web": [
            PYTHON,
            "-m",
            "gunicorn",
            "-c",
            str(BASE_DIR / "gunicorn.conf.py"),
            "-b",
            f"127.0.0.1:{port}",
            "recsys.wsgi:application",
        ],
        "worker": celery_worker_command("recsys"),
        "beat": [*celery, "beat", "-l", "info", "-s", str(data_dir() / "celerybeat-schedule")],
    }


class Supervisor:
    """Runs named processes; when one exits or a signal arrives, stops the rest."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, commands: dict[str, list[str]]) -> None:
        # Handlers first: a signal that arrives while the children start must still stop them.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for name, command in commands.items():
            # Own process groups: Ctrl-C reaches the supervisor, which stops children in order.
            self.children[name] = subprocess.Popen(command, env=self.env, cwd=BASE_DIR, start_new_session=True)
            log(f"{name} started (pid {self.children[name].pid})")

    def wait(self) -> int:
        while not self.stopping:
            for name, child in self.children.items():
                if child.poll() is not None:
                    log(f"{name} exited with {child.returncode}; stopping the others")
                    self.stop()
                    return child.returncode or 1
            time.sleep(0.5)
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        log(f"received {signal.Signals(signum).name}; stopping")
        self.stopping = True

    def stop(self) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in time; killing it")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def serve(env: dict[str, str], port: str, on_ready: object = None) -> int:
    manage(env, "migrate", "--no-input", "-v", "0")
    supervisor = Supervisor(env)
    supervisor.start(process_commands(port))
    try:
        if not wait_healthy(port, supervisor):
            interrupted = supervisor.stopping  # a signal while starting is a clean stop
            supervisor.stop()
            return 0 if interrupted else 1
        if callable(on_ready):
            on_ready()
        log(f"serving on http://127.0.0.1:{port}/ (API docs: /api/docs/, admin: /admin/); Ctrl-C stops everything")
        return supervisor.wait()
    finally:
        supervisor.stop()


def wait_healthy(port: str, supervisor: Supervisor, seconds: float = 60) -> bool:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if supervisor.stopping or any(child.poll() is not None for child in supervisor.children.values()):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    log("the web server did not become healthy in time")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.run", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["serve", "demo", "exec"])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    port = os.environ.get("PORT", "8000")
    with services() as env:
        if args.mode == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return subprocess.run(command, env=env, cwd=BASE_DIR).returncode
        if args.mode == "serve":
            return serve(env, port)
        from recsys.demo import demo_prepare

        return demo_prepare(env, port, serve)


if __name__ == "__main__":
    sys.exit(main())
