"""End-to-end fixtures: the real server (gunicorn, worker, beat) on the test database, and Debian's
Chromium driven by Playwright. Tests skip with the reason when either is missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import live_env  # noqa: F401 (the fixture, re-exported here)

CHROMIUM = os.environ.get("RECSYS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
STAFF = {"username": "operator", "password": "e2e-operator-password"}


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -r requirements-dev.txt)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set RECSYS_CHROMIUM)"
    return None


@pytest.fixture
def server(live_env: dict[str, str], tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """``python -m recsys.run serve`` on a free port; yields its base URL, stops it after."""
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.run", "serve"], env=live_env, stdout=log, stderr=log, start_new_session=True
    )
    base = f"http://127.0.0.1:{live_env['PORT']}"
    try:
        _wait_healthy(base, proc)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        print((tmp_path / "serve.log").read_text(errors="replace")[-4000:])


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited while starting"
        try:
            with urllib.request.urlopen(f"{base}/api/v1/health", timeout=2):  # noqa: S310 (loopback)
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the server never became healthy")


@pytest.fixture
def browser_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls (data
    # set-up, polling) are still plain synchronous code, so Django's async guard is lifted.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            browser.close()
            # ORM calls made while the loop ran used a connection of their own context: close it,
            # or the test database cannot be dropped at the end of the session.
            from django.db import connections

            connections.close_all()


@pytest.fixture
def staff_user(transactional_db: None) -> dict[str, str]:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser(email="", **STAFF)
    return STAFF
