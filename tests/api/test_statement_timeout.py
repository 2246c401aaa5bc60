"""The serving path is bounded by a statement timeout: a slow query is cut and answered 503 with the
JSON error body; ingestion, workers and migrations are not cut by it."""

from __future__ import annotations

import os
import runpy
import time
from pathlib import Path

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def slow_item_get(**kwargs):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(5)")


@pytest.fixture
def serving_timeout(settings):
    settings.RECSYS_SERVING_STATEMENT_TIMEOUT_MS = 200
    yield
    connection.close()  # the next test starts on a connection with the default timeout


def test_a_slow_serving_query_is_cut_and_answered_503_in_json(reader, serving_timeout, monkeypatch):
    monkeypatch.setattr("recsys.selectors.item_get", slow_item_get)

    started = time.monotonic()
    response = reader.get("/api/v1/items/x")

    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "time limit" in response.json()["error"]["message"]


def test_ingestion_is_not_bound_by_the_serving_timeout(writer, serving_timeout):
    reader_answer = writer.get("/api/v1/items/x")  # a read sets the timeout on this connection
    assert reader_answer.status_code == 404

    writer.put("/api/v1/users/u", {"attributes": {}}, format="json")

    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"  # the write reset it to the connection's default


def test_reads_leave_the_timeout_set_for_the_next_read(reader, serving_timeout):
    reader.get("/api/v1/items/x")

    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "200ms"


def test_only_the_web_process_gets_a_serving_timeout_by_default(monkeypatch):
    monkeypatch.delenv("RECSYS_SERVING_STATEMENT_TIMEOUT_MS", raising=False)
    from django.conf import settings

    assert settings.RECSYS_SERVING_STATEMENT_TIMEOUT_MS == 0  # tests, workers, manage.py: none

    runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))

    assert os.environ["RECSYS_SERVING_STATEMENT_TIMEOUT_MS"] == "2000"


def test_health_reports_a_database_outage_even_where_the_serving_timeout_was_set(client, serving_timeout, monkeypatch):
    from django.db import OperationalError

    def database_away(*args, **kwargs):
        raise OperationalError("connection refused")

    connection.recsys_statement_timeout = 200  # this process served a read request earlier
    monkeypatch.setattr("api.middleware.statement_timeout_set", database_away)
    monkeypatch.setattr("api.views._database_status", lambda: "down")

    response = client.get("/api/v1/health")

    assert response.status_code == 503 and response.json()["database"] == "down"
