"""Process supervisor behind ``make serve``, ``make demo`` and ``make test``.

It starts the embedded PostgreSQL/Redis when DATABASE_URL/REDIS_URL are unset (and stops only
those it started), passes their URLs to its children, and runs web (gunicorn), Celery worker
and beat in the foreground, restarting any of them that exits (with a backoff), until Ctrl-C,
SIGTERM or SIGHUP, when it stops all of them.

    python -m recsys.run serve            # web + a worker per queue kind (training, realtime, maintenance) + beat
    python -m recsys.run demo             # migrate, demo data, train, serve, print curl examples
    python -m recsys.run exec -- CMD ...  # run CMD with the services up (used by make test)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
    global _held
    try:
        # Named before it starts: a signal while it starts (a first initdb takes seconds) still stops it,
        # once it has started: a stop signal is held meanwhile (one that cut initdb short left a data
        # folder that no later start could use).
        _held = []
        if not env.get("DATABASE_URL"):
            started += [] if embedded.postgres_running(folder) else ["postgres"]
            env["DATABASE_URL"] = embedded.postgres_url(folder)
        if not env.get("REDIS_URL"):
            started += [] if embedded.redis_running(folder) else ["redis"]
            env["REDIS_URL"] = embedded.redis_url(folder)
        held, _held = _held, None
        if started:
            log(f"started embedded {' and '.join(started)} under {folder}")
        if held:
            raise Stopped(held[0])
        yield env
    finally:
        _held = None
        if "redis" in started:
            embedded.redis_stop(folder)
        if "postgres" in started:
            embedded.postgres_stop(folder)
        if started:
            log(f"stopped embedded {' and '.join(started)}")


def log(message: str) -> None:
    # A closed terminal (the SIGHUP case) fails every write, and a signal handler's write can re-enter
    # a write in progress (RuntimeError): neither must cut a stop short.
    with suppress(OSError, RuntimeError):
        print(f"[recsys] {message}", file=sys.stderr, flush=True)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a CI timeout, systemd; a closed terminal, a dropped SSH
EXEC_STOP_SECONDS = 10.0  # how long `exec` gives its child to stop after a forwarded signal


class Stopped(BaseException):
    """SIGTERM or SIGHUP outside supervision. Their default action ends the process without its
    ``finally`` blocks, leaving the embedded services (and an ``exec`` child) running; raised
    instead, it unwinds through them. A BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_held: list[int] | None = None  # stop signals received while the embedded services start (services())


def _raise_stopped(signum: int, frame: object) -> None:
    if _held is not None:
        _held.append(signum)
        return
    log(f"received {signal.Signals(signum).name}; stopping")
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)  # once: a second signal must not cut the cleanup short
    raise Stopped(signum)


def run_foreground(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` as a shell runs a foreground job, returning its exit code (128 + N when
    signal N ended it). It shares our process group, so Ctrl-C reaches it from the terminal and it
    decides (a REPL survives it, pytest tears down): we ignore SIGINT meanwhile, as a shell does,
    and stop the services only after it exits. SIGTERM/SIGHUP to us reach it only through us: it
    gets the same signal, EXEC_STOP_SECONDS to exit, then SIGKILL."""
    child = subprocess.Popen(command, env=env, cwd=BASE_DIR)
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    except Stopped as stop:
        child.send_signal(stop.signum)
        try:
            child.wait(timeout=EXEC_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log(f"{command[0]} did not stop in time; killing it")
            child.kill()
            child.wait()
        raise
    finally:
        signal.signal(signal.SIGINT, interrupt)
    return 128 - code if code < 0 else code


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], env=env, check=True, cwd=BASE_DIR)


ALL_QUEUES = "training,realtime,maintenance,default"
# `make serve` runs one worker per kind of work (settings.CELERY_TASK_ROUTES), so that a training
# run never delays a fold-in: name → (queues, pool processes). Training is one run at a time per
# machine; realtime and maintenance are light (one process each keeps a 2-core machine's memory
# for the web workers; RECSYS_WORKER_<NAME>_CONCURRENCY raises it). "default" holds any task no
# route names.
WORKERS = {
    "training": ("training", 1),
    "realtime": ("realtime", 1),
    "maintenance": ("maintenance,default", 1),
}


def celery_worker_command(
    name: str, *, queues: str = ALL_QUEUES, level: str = "info", concurrency: int = 0
) -> list[str]:
    """The Celery worker command line (``concurrency`` 0 = one process per core). A worker of the
    training queue takes a task only when a process is free (--disable-prefetch): a busy one never
    holds the next run back from an idle training worker on another machine."""
    command = [PYTHON, "-m", "celery", "-A", "recsys", "worker", "-Q", queues, "-l", level, "-n", f"{name}@%h"]
    if "training" in queues.split(","):
        command.append("--disable-prefetch")
    return [*command, "-c", str(concurrency)] if concurrency else command


def worker_commands() -> dict[str, list[str]]:
    """One Celery worker per kind of work (see WORKERS), named ``<kind>@<host>``."""
    commands = {}
    for name, (queues, concurrency) in WORKERS.items():
        processes = int(os.environ.get(f"RECSYS_WORKER_{name.upper()}_CONCURRENCY") or concurrency)
        commands[f"worker-{name}"] = celery_worker_command(name, queues=queues, concurrency=processes)
    return commands


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
        **worker_commands(),
        "beat": [*celery, "beat", "-l", "info", "-s", str(data_dir() / "celerybeat-schedule")],
    }


class Supervisor:
    """Runs named processes and restarts one that exits, after a backoff that grows while it keeps
    failing; only a signal (Ctrl-C, SIGTERM, SIGHUP) stops them all. A crashed worker costs background
    work only: web keeps serving and the services stay up while it comes back."""

    BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
    HEALTHY_AFTER_SECONDS = 60.0  # a child that ran this long starts again from the shortest delay

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.commands: dict[str, list[str]] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.started_at: dict[str, float] = {}
        self.failures: dict[str, int] = {}  # backoff step per child: exits that followed a short run, less one
        self.restart_at: dict[str, float] = {}
        self.stopping = False

    def start(self, commands: dict[str, list[str]]) -> None:
        # Handlers first: a signal that arrives while the children start must still stop them.
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, self._on_signal)
        self.commands = dict(commands)
        for name in commands:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        # Own process groups: Ctrl-C reaches the supervisor, which stops children in order.
        child = subprocess.Popen(self.commands[name], env=self.env, cwd=BASE_DIR, start_new_session=True)
        self.children[name], self.started_at[name] = child, time.monotonic()
        log(f"{name} started (pid {child.pid})")

    def wait(self) -> int:
        """Supervise until a signal arrives; returns 0 then."""
        while not self.stopping:
            self.check()
            time.sleep(0.5)
        return 0

    def check(self) -> None:
        """Schedule a restart for each child that exited; start those whose delay has passed."""
        now = time.monotonic()
        for name, child in self.children.items():
            if child.poll() is not None and name not in self.restart_at:
                self.restart_at[name] = now + self._backoff(name, ran=now - self.started_at[name])
                log(
                    f"{name} exited with {child.returncode} after {now - self.started_at[name]:.0f} s; "
                    f"restarting it in {self.restart_at[name] - now:.1f} s"
                )
                _group_kill(child.pid)  # what it leaves behind (pool processes, gunicorn workers holding the port)
        for name, when in list(self.restart_at.items()):
            if now >= when and not self.stopping:
                del self.restart_at[name]
                self._spawn(name)

    def _backoff(self, name: str, *, ran: float) -> float:
        """1 s after the first exit, then twice as long after each exit that follows a short run."""
        step = 0 if ran >= self.HEALTHY_AFTER_SECONDS else self.failures.get(name, -1) + 1
        self.failures[name] = step
        return self.BACKOFF_SECONDS[min(step, len(self.BACKOFF_SECONDS) - 1)]

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


def _group_kill(pgid: int) -> None:
    """SIGKILL what is left of a dead child's process group (its leader is gone already)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def serve(env: dict[str, str], port: str, on_ready: object = None) -> int:
    manage(env, "migrate", "--no-input", "-v", "0")
    supervisor = Supervisor(env)
    supervisor.start(process_commands(port))
    try:
        if not wait_healthy(port, supervisor):
            interrupted = supervisor.stopping  # a signal while starting is a clean stop
            supervisor.stop()
            return 0 if interrupted else 1
        log(f"serving on http://127.0.0.1:{port}/ (API docs: /api/docs/, admin: /admin/); Ctrl-C stops everything")
        if callable(on_ready):
            # Beside supervision, not before it: a child that crashes while the demo trains is restarted.
            threading.Thread(target=on_ready, name="on-ready", daemon=True).start()
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
    # From here until the supervisor takes over (after migrate, demo data), a stop signal unwinds.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)
    try:
        with services() as env:
            if args.mode == "exec":
                command = args.command[1:] if args.command[:1] == ["--"] else args.command
                return run_foreground(command, env)
            if args.mode == "serve":
                return serve(env, port)
            from recsys.demo import demo_prepare

            return demo_prepare(env, port, serve)
    except Stopped as stop:
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
