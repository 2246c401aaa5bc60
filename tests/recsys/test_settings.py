"""Environment helpers and URL parsing behind the settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from recsys.env import env_bool, env_duration, env_float, env_int, env_list
from recsys.redis_urls import celery_redis_url, redis_base_db, redis_db_url
from recsys.settings import database_config


def test_database_url_with_socket_host_in_query():
    config = database_config("postgresql://postgres:@/recsys?host=/tmp/pg")

    assert (config["NAME"], config["USER"], config["HOST"], config["PORT"]) == ("recsys", "postgres", "/tmp/pg", "")


def test_database_url_with_tcp_host_and_escaped_password():
    config = database_config("postgres://app:p%40ss@db.internal:5433/shop")

    assert (config["HOST"], config["PORT"], config["PASSWORD"], config["NAME"]) == (
        "db.internal",
        "5433",
        "p@ss",
        "shop",
    )


def test_database_url_of_another_engine_fails_loudly():
    with pytest.raises(ImproperlyConfigured):
        database_config("mysql://root@localhost/db")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
        ("redis://:pw@h:6379", "redis://:pw@h:6379/1"),
        ("unix:///tmp/r.sock", "unix:///tmp/r.sock?db=1"),
    ],
)
def test_redis_database_is_swapped_for_the_cache(url, expected):
    assert redis_db_url(url, 1) == expected


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://h:6379/4", 4),
        ("redis://h:6379", 0),
        ("redis://h:6379/", 0),
        ("unix:///r.sock?db=7", 7),
        ("unix:///r.sock", 0),
    ],
)
def test_the_database_redis_url_names_is_read(url, db):
    assert redis_base_db(url) == db


def test_the_cache_and_results_take_the_two_databases_after_redis_urls():
    # Two deployments (or two pytest-xdist workers) share one Redis by naming databases three apart.
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/4", "RECSYS_INSECURE_DEV_KEY": "true"}
    code = (
        "import recsys.settings as s; "
        "print(s.CACHES['default']['LOCATION'], s.CELERY_BROKER_URL, s.CELERY_RESULT_BACKEND)"
    )
    answer = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)

    assert answer.stdout.split() == ["redis://127.0.0.1:6379/5", "redis://127.0.0.1:6379/4", "redis://127.0.0.1:6379/6"]


def test_bad_environment_values_fail_loudly(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_INT", "ten")
    monkeypatch.setenv("X_SMALL", "0")

    with pytest.raises(ImproperlyConfigured):
        env_bool("X_BOOL", False)
    with pytest.raises(ImproperlyConfigured):
        env_int("X_INT", 1)
    with pytest.raises(ImproperlyConfigured):
        env_int("X_SMALL", 1, minimum=1)


@pytest.mark.parametrize("raw", ["half", "nan", "inf", "-0.5"])
def test_bad_numbers_fail_loudly(monkeypatch, raw):
    monkeypatch.setenv("X_SHARE", raw)

    with pytest.raises(ImproperlyConfigured, match="X_SHARE"):
        env_float("X_SHARE", 1.0, minimum=0.0)


def test_a_number_within_its_bounds_is_read(monkeypatch):
    monkeypatch.setenv("X_SHARE", "0.25")

    assert env_float("X_SHARE", 1.0, minimum=0.0) == 0.25


def test_environment_lists_and_defaults(monkeypatch):
    monkeypatch.setenv("X_LIST", "a, b,,c")

    assert env_list("X_LIST", []) == ["a", "b", "c"]
    assert env_bool("X_UNSET_FLAG", True) is True


def test_celery_spells_unix_sockets_its_own_way():
    assert celery_redis_url("unix:///tmp/r.sock", 2) == "redis+socket:///tmp/r.sock?virtual_host=2"
    assert celery_redis_url("redis://h:6379/0", 2) == "redis://h:6379/2"


@pytest.mark.parametrize(
    ("raw", "seconds"), [("24h", 86_400), ("30m", 1_800), ("90", 90), ("45s", 45), ("7D", 604_800)]
)
def test_durations_take_a_unit_or_seconds(monkeypatch, raw, seconds):
    monkeypatch.setenv("X_DURATION", raw)
    assert env_duration("X_DURATION", "1h") == seconds


@pytest.mark.parametrize("raw", ["soon", "h", "1.5h", "-5m", "0"])
def test_bad_durations_fail_loudly(monkeypatch, raw):
    monkeypatch.setenv("X_DURATION", raw)
    with pytest.raises(ImproperlyConfigured):
        env_duration("X_DURATION", "1h")


def test_an_unset_duration_takes_its_default():
    assert env_duration("X_UNSET_DURATION", "24h") == 86_400


@pytest.mark.parametrize(("raw", "ok"), [("0", True), ("20000", True), ("500", False), ("-1", False)])
def test_the_tuning_sample_is_off_or_large_enough(raw, ok):
    env = {**os.environ, "RECSYS_CF_TUNE_SAMPLE_INTERACTIONS": raw, "RECSYS_INSECURE_DEV_KEY": "true"}
    answer = subprocess.run(
        [sys.executable, "-c", "import recsys.settings as s; print(s.RECSYS_CF_TUNE_SAMPLE_INTERACTIONS)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert (answer.returncode == 0) is ok, answer.stderr
    assert (answer.stdout.strip() == raw) if ok else "RECSYS_CF_TUNE_SAMPLE_INTERACTIONS" in answer.stderr


@pytest.mark.unit
def test_each_xdist_worker_gets_three_redis_databases_of_its_own():
    from tests.xdist_workers import worker_redis_url

    assert worker_redis_url("redis://h:6379/0", "gw0") == "redis://h:6379/0"
    assert worker_redis_url("redis://h:6379/0", "gw2") == "redis://h:6379/6"
    assert worker_redis_url("unix:///r.sock", "gw1") == "unix:///r.sock?db=3"
    with pytest.raises(RuntimeError, match="fewer workers"):
        worker_redis_url("redis://h:6379/0", "gw5")
