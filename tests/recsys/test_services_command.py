"""Importing the settings starts nothing: `manage.py services status` reports without starting the
embedded servers, and a command that needs them says how to start them instead of starting them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recsys.run import BASE_DIR

SETTINGS_IMPORT = (
    "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'recsys.settings'); django.setup(); "
    "from django.conf import settings; print(settings.DATABASE_URL); print(settings.REDIS_URL)"
)


def without_services(data_dir: Path) -> dict[str, str]:
    """This environment with the embedded services chosen (no URLs) in a data folder of their own."""
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    return {**env, "RECSYS_DATA_DIR": str(data_dir), "RECSYS_INSECURE_DEV_KEY": "true"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=120)


def test_importing_settings_reads_the_environment_and_starts_no_service(tmp_path):
    data_dir = tmp_path / "data"

    answer = run(without_services(data_dir), sys.executable, "-c", SETTINGS_IMPORT)

    assert answer.returncode == 0, answer.stderr
    database_url, redis_url = answer.stdout.split()
    assert str(data_dir / "postgres") in database_url and str(data_dir / "redis") in redis_url
    assert not data_dir.exists(), "something was started under the data folder"


def test_services_status_reports_not_running_and_changes_nothing(tmp_path):
    data_dir = tmp_path / "data"

    answer = run(without_services(data_dir), sys.executable, "manage.py", "services", "status")

    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.count("embedded, not running") == 2, answer.stdout
    assert not data_dir.exists()


def test_services_status_names_configured_urls_as_external(tmp_path):
    env = {**without_services(tmp_path / "data"), "REDIS_URL": "redis://127.0.0.1:1/0"}

    answer = run(env, sys.executable, "manage.py", "services", "status")

    assert "redis://127.0.0.1:1/0 (external, from REDIS_URL)" in answer.stdout
    assert "database: embedded, not running" in answer.stdout


def test_a_command_needing_the_database_says_how_to_start_the_services(tmp_path):
    data_dir = tmp_path / "data"

    answer = run(without_services(data_dir), sys.executable, "manage.py", "migrate")

    assert answer.returncode == 2
    assert "needs PostgreSQL and Redis" in answer.stderr
    assert "python -m recsys.run exec -- .venv/bin/python manage.py migrate" in answer.stderr
    assert "make services-start" in answer.stderr
    assert not data_dir.exists()
