"""Helpers for tests that start real processes against the test database."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_env(transactional_db: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for child processes: the test database and Redis, a free port, eager mode off, and
    a data folder of their own (beat's schedule file: tests on other xdist workers run their own beat)."""
    db = connection.settings_dict
    host = db["HOST"] or "localhost"
    auth = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    if host.startswith("/"):
        url = f"postgresql://{auth}@/{db['NAME']}?host={host}"
    else:
        url = f"postgresql://{auth}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    import os

    env = {k: v for k, v in os.environ.items() if k != "CELERY_TASK_ALWAYS_EAGER"}
    # A flush after an earlier transactional test empties the seeded event types: put them back.
    from recsys.migrations._event_type_defaults import event_types_seed
    from recsys.models import EventType

    event_types_seed(EventType)
    env.update(
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        PORT=str(free_port()),
        WEB_CONCURRENCY="2",
        RECSYS_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        # Every live server of a run counts failed keys per address in one namespace, and all clients
        # are 127.0.0.1: tests that send invalid or revoked keys on purpose would trip each other's
        # 429s. The throttle itself is tested in-process (tests/api/test_throttling.py).
        RECSYS_AUTH_FAILURE_RATE="100000/min",
    )
    yield env
    # Version tables are not Django's: drop them before the test database is flushed.
    from embeddings.models import ModelVersion, VectorSpace
    from embeddings.vectors import tables

    for version_id in ModelVersion.objects.values_list("pk", flat=True):
        tables.tables_drop(version_id)
    for name in VectorSpace.objects.values_list("name", flat=True):
        tables.space_table_drop(name)
