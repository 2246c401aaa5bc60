"""The supervisor behind `make serve` restarts a child that exits, with a growing backoff, and
stops everything only on a signal (what each signal does at each stage: test_run_signals.py)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator

import pytest

from recsys.run import Supervisor

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    supervisor = Supervisor(env={})
    yield supervisor
    supervisor.stop()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def supervise(supervisor: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.05)


def test_a_child_that_exits_is_restarted_after_a_growing_backoff(supervisor, monkeypatch):
    monkeypatch.setattr(Supervisor, "BACKOFF_SECONDS", (0.2, 0.4, 0.8))
    supervisor.start(
        {
            "crasher": [sys.executable, "-c", "raise SystemExit(3)"],
            "steady": [sys.executable, "-c", "import time; time.sleep(30)"],
        }
    )
    steady = supervisor.children["steady"].pid

    supervise(supervisor, 2.0)

    # 0.2 + 0.4 + 0.8 s of delays and the start-up time of each try
    assert supervisor.failures["crasher"] >= 1
    assert supervisor.children["steady"].pid == steady and supervisor.children["steady"].poll() is None
    assert not supervisor.stopping


def test_a_child_that_ran_long_enough_restarts_after_the_shortest_delay(supervisor, monkeypatch):
    monkeypatch.setattr(Supervisor, "HEALTHY_AFTER_SECONDS", 0.0)
    supervisor.failures["worker"] = 4

    assert supervisor._backoff("worker", ran=1.0) == Supervisor.BACKOFF_SECONDS[0]


def test_the_first_exit_waits_the_shortest_delay_and_the_next_ones_longer(supervisor):
    assert [supervisor._backoff("web", ran=0.5) for _ in range(3)] == list(Supervisor.BACKOFF_SECONDS[:3])


def test_backoff_stops_growing_at_its_longest_delay(supervisor):
    supervisor.failures["worker"] = 40

    assert supervisor._backoff("worker", ran=0.5) == Supervisor.BACKOFF_SECONDS[-1]


def test_a_signal_stops_supervision_and_all_children(supervisor):
    supervisor.start({"steady": [sys.executable, "-c", "import time; time.sleep(30)"]})
    child = supervisor.children["steady"]

    signal.raise_signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    supervisor.stop()

    assert child.poll() is not None
