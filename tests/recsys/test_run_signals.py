"""`python -m recsys.run` under signals: Ctrl-C in `exec` belongs to the child, and SIGTERM/SIGHUP at
any stage stop what the supervisor started (its children, then the embedded services) instead of
killing it on the spot and leaving them running.

Each test runs the real supervisor in a process of its own, with the embedded services replaced by
fakes that write to an events file (as do the children), so the order of events can be checked.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from recsys.run import BASE_DIR

pytestmark = pytest.mark.unit  # fakes for the services: nothing is started but the processes here

# Runs recsys.run.main(argv) with fake embedded services (and serve's web parts patched out).
WRAPPER = """
import os, subprocess, sys, time
from pathlib import Path
from recsys import embedded, run

events = Path(os.environ["EVENTS"])
def note(text):
    with events.open("a") as file:
        file.write(text + "\\n")

def start(name, seconds=0.0):
    note(f"{name} starting")
    time.sleep(seconds)
    note(f"{name} started")
    return f"{name}://fake"

embedded.postgres_running = embedded.redis_running = lambda folder: False
embedded.postgres_url = lambda folder: start("postgres", float(os.environ.get("POSTGRES_START_SECONDS", 0)))
embedded.redis_url = lambda folder: start("redis")
embedded.postgres_stop = lambda folder: note("postgres stopped")
embedded.redis_stop = lambda folder: note("redis stopped")
run.BASE_DIR = Path(os.environ["FAKE_BASE_DIR"])  # its manage.py stands for migrate
run.EXEC_STOP_SECONDS = 0.5
run.wait_healthy = lambda port, supervisor, seconds=60: True
run.process_commands = lambda port: {"child": [sys.executable, os.environ["CHILD"]]}
sys.exit(run.main(sys.argv[1:]))
"""

# A child that notes its pid, then what it receives; Ctrl-C does not end it (as in a REPL).
CHILD = """
import os, signal, sys, time
from pathlib import Path

events = Path(os.environ["EVENTS"])
def note(text):
    with events.open("a") as file:
        file.write(text + "\\n")

received = []
def on_signal(signum, frame):
    received.append(signum)
    note(f"child got {signal.Signals(signum).name}")

signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGHUP, on_signal)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("CHILD_IGNORES_SIGTERM") else on_signal)
with open(os.environ["PIDS"], "a") as file:
    file.write(f"{os.getpid()}\\n")
note("child ready")
while not received:
    time.sleep(0.02)
if received == [signal.SIGINT]:
    time.sleep(0.5)  # still running after Ctrl-C: the supervisor and the services must wait for it
    note("child exiting")
    sys.exit(7)
sys.exit(0)
"""

# Stands for `manage.py migrate`: runs until it is stopped.
MANAGE = """
import os, time
with open(os.environ["PIDS"], "a") as file:
    file.write(f"{os.getpid()}\\n")
with open(os.environ["EVENTS"], "a") as file:
    file.write("migrate started\\n")
time.sleep(30)
"""

SERVICES_UP = ["postgres starting", "postgres started", "redis starting", "redis started"]
SERVICES_DOWN = ["redis stopped", "postgres stopped"]


class Run:
    def __init__(self, tmp_path: Path) -> None:
        self.events, self.pids = tmp_path / "events", tmp_path / "pids"
        (tmp_path / "wrapper.py").write_text(textwrap.dedent(WRAPPER))
        (tmp_path / "child.py").write_text(textwrap.dedent(CHILD))
        (tmp_path / "manage.py").write_text("")  # migrate ends at once unless a test says otherwise
        self.tmp_path = tmp_path
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
            "PYTHONPATH": str(BASE_DIR),
            "RECSYS_DATA_DIR": str(tmp_path / "data"),
            "EVENTS": str(self.events),
            "PIDS": str(self.pids),
            "CHILD": str(tmp_path / "child.py"),
            "FAKE_BASE_DIR": str(tmp_path),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *argv: str, output: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        # A process group of its own, as a shell's foreground job: a Ctrl-C reaches it and its child only.
        self.proc = subprocess.Popen(
            [sys.executable, str(self.tmp_path / "wrapper.py"), *argv],
            env=self.env,
            cwd=BASE_DIR,
            start_new_session=True,
            stdout=output,
            stderr=output,
        )
        return self.proc

    def exec_child(self) -> subprocess.Popen[bytes]:
        return self.start("exec", "--", sys.executable, str(self.tmp_path / "child.py"))

    def noted(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []

    def wait_for(self, event: str, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while event not in self.noted():
            assert time.monotonic() < deadline, f"no {event!r} in {self.noted()}"
            time.sleep(0.02)

    def left_running(self) -> list[int]:
        pids = [int(line) for line in self.pids.read_text().split()] if self.pids.exists() else []
        return [pid for pid in pids if _alive(pid)]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.left_running():
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # an orphan's zombie may wait for init
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    run = Run(tmp_path)
    yield run
    run.cleanup()


def test_ctrl_c_in_exec_reaches_the_child_which_decides(run):
    proc = run.exec_child()
    run.wait_for("child ready")

    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does with Ctrl-C: the whole foreground group

    assert proc.wait(timeout=5) == 7  # the child's own exit code
    assert run.noted() == [*SERVICES_UP, "child ready", "child got SIGINT", "child exiting", *SERVICES_DOWN]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_in_exec_stops_the_child_then_the_services(run, signum):
    proc = run.exec_child()
    run.wait_for("child ready")

    proc.send_signal(signum)  # the supervisor only (a CI timeout, a closed terminal)

    assert proc.wait(timeout=5) == 128 + signum
    assert run.noted() == [*SERVICES_UP, "child ready", f"child got {signum.name}", *SERVICES_DOWN]
    assert run.left_running() == []


def test_a_child_that_ignores_sigterm_in_exec_is_killed_after_a_while(run):
    run.env["CHILD_IGNORES_SIGTERM"] = "1"
    proc = run.exec_child()
    run.wait_for("child ready")

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=5) == 128 + signal.SIGTERM  # after EXEC_STOP_SECONDS (0.5 s here)
    assert run.left_running() == []
    assert run.noted() == [*SERVICES_UP, "child ready", *SERVICES_DOWN]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_migrate_stops_it_and_the_services(run, signum):
    (run.tmp_path / "manage.py").write_text(textwrap.dedent(MANAGE))
    proc = run.start("serve")
    run.wait_for("migrate started")

    proc.send_signal(signum)

    assert proc.wait(timeout=5) == 128 + signum
    assert run.noted() == [*SERVICES_UP, "migrate started", *SERVICES_DOWN]
    assert run.left_running() == []


def test_a_stop_signal_while_the_services_start_lets_them_start_then_stops_them(run):
    # Not cut short: a first initdb killed half way leaves a data folder no later start can use
    run.env["POSTGRES_START_SECONDS"] = "2"
    proc = run.start("serve")
    run.wait_for("postgres starting")

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=15) == 128 + signal.SIGTERM
    assert run.noted() == [
        "postgres starting",
        "postgres started",
        "redis starting",
        "redis started",
        "redis stopped",
        "postgres stopped",
    ]


def test_sighup_from_a_closed_terminal_stops_serve_children_and_services(run):
    terminal, tty = pty.openpty()  # the supervisor's output goes to a terminal that then goes away
    try:
        proc = run.start("serve", output=tty)
    finally:
        os.close(tty)
    run.wait_for("child ready")

    os.close(terminal)  # the terminal closes: writes to it fail from now on
    proc.send_signal(signal.SIGHUP)

    assert proc.wait(timeout=25) == 0  # a stop as after SIGTERM
    assert run.noted() == [*SERVICES_UP, "child ready", "child got SIGTERM", *SERVICES_DOWN]
    assert run.left_running() == []
