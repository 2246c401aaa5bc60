"""Deployment settings: debug off unless asked for, a secret key outside debug, TLS settings from one
switch, and `manage.py check --deploy` clean with the production environment documented in README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
# README "Operations": the environment of a production web process behind a TLS proxy.
PRODUCTION = {
    "DJANGO_SECRET_KEY": "k" * 20 + "-production-secret-of-sufficient-length-and-variety-0123456789",
    "DJANGO_ALLOWED_HOSTS": "recsys.example.com",
    "DJANGO_SECURE": "true",
}


def manage(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
        "RECSYS_DATA_DIR": str(settings.DATA_DIR),
        **env_overrides,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_has_no_warnings_with_the_production_environment():
    answer = manage(PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")

    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_check_deploy_warns_without_tls_settings():
    answer = manage({k: v for k, v in PRODUCTION.items() if k != "DJANGO_SECURE"}, "check", "--deploy")

    assert "security.W004" in answer.stderr + answer.stdout  # no HSTS


def test_a_secret_key_is_required_outside_debug():
    answer = manage({"DJANGO_ALLOWED_HOSTS": "x"}, "check")

    assert answer.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in answer.stderr


PRODUCTION_CHECKED = {
    "DEBUG": False,
    "SESSION_COOKIE_SECURE": True,
    "CSRF_COOKIE_SECURE": True,
    "SECURE_SSL_REDIRECT": True,
    "SECURE_HSTS_SECONDS": 31536000,
    "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    "ALLOWED_HOSTS": ["recsys.example.com"],
}


@pytest.fixture(scope="module")
def production_settings() -> dict[str, str]:
    """repr() of each checked setting in a process started with the production environment (one
    process for them all: Django's start is most of the cost)."""
    code = (
        "import django, json, os; os.environ['DJANGO_SETTINGS_MODULE']='recsys.settings'; django.setup(); "
        "from django.conf import settings; "
        f"print(json.dumps({{name: repr(getattr(settings, name)) for name in {sorted(PRODUCTION_CHECKED)!r}}}))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code],
        env={
            "PATH": "/usr/bin:/bin",
            "DATABASE_URL": settings.DATABASE_URL,
            "REDIS_URL": settings.REDIS_URL,
            **PRODUCTION,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


@pytest.mark.parametrize(("name", "expected"), PRODUCTION_CHECKED.items())
def test_production_environment_settings(production_settings, name, expected):
    assert production_settings[name] == repr(expected)


def test_debug_is_off_unless_asked_for():
    assert settings.DEBUG is False
