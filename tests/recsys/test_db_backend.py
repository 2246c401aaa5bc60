"""The per-request health check: free while the connection is sound, a reconnect when the server closed it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections, connection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_connection() -> None:
    """A connection opened now: one an earlier test opened may be past CONN_MAX_AGE, and the request's
    end (close_old_connections) would close it on purpose, which these tests must not mistake."""
    connection.close()


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_a_sound_connection_is_reused_without_a_statement(monkeypatch):
    pid = backend_pid()
    close_old_connections()  # a request ends: the next one starts with a health check
    statements: list[Any] = []
    execute = psycopg.Cursor.execute
    monkeypatch.setattr(
        psycopg.Cursor,
        "execute",
        lambda cursor, query, *a, **k: statements.append(query) or execute(cursor, query, *a, **k),
    )

    assert backend_pid() == pid
    assert [str(q) for q in statements] == ["SELECT pg_backend_pid()"]  # no SELECT 1 before it


def test_a_connection_the_server_closed_is_replaced_before_the_next_request():
    pid = backend_pid()
    close_old_connections()
    admin = connection.settings_dict
    url = f"host={admin['HOST']} port={admin['PORT'] or 5432} user={admin['USER']} dbname={admin['NAME']}"
    with psycopg.connect(url, password=admin["PASSWORD"] or None, autocommit=True) as other:
        # pg_terminate_backend waits for the backend to exit (timeout in ms), as a restart would.
        assert other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]

    assert backend_pid() != pid  # the check saw the closed socket and reconnected: no error


def test_the_check_is_on():
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True
    assert settings.DATABASES["default"]["ENGINE"] == "recsys.db_backend"
