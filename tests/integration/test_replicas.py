"""Serving from a real streaming replica: reads reach it, a lagging one is skipped once past the
bound, a user who just wrote reads their own writes, and a replica that dies under load costs no
client an error. The replica is a ``pg_basebackup -R`` copy of the test database's server."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from embeddings import services
from embeddings.learners import LearnerParams
from recsys.api_keys import api_key_create
from recsys.models import Item
from recsys.run import process_commands
from tests.integration.conftest import free_port
from tests.integration.faults import http, ok, poll
from tests.integration.replica import ReplicaUnavailable, StreamingReplica
from tests.integration.test_serve import wait_for_health

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def replica(django_db_setup: None) -> Iterator[StreamingReplica]:
    """A streaming standby of the server that holds the test database (created by now)."""
    db = connection.settings_dict
    host = db["HOST"] or "127.0.0.1"
    server = StreamingReplica({"host": host, "port": int(db["PORT"] or 5432), "user": db["USER"]}, free_port())
    try:
        server.start()
    except ReplicaUnavailable as reason:
        pytest.skip(f"no streaming replica on this machine: {reason}")
    yield server
    server.stop()


def primary_lsn() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        return str(cursor.fetchone()[0])


def caught_up(replica: StreamingReplica) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    target = primary_lsn()
    poll(lambda: replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])[0][0], 30, "replay")


@pytest.fixture
def served(live_env: dict[str, str], replica: StreamingReplica, communities: None, tmp_path: Path):
    """A trained model and a started ``web(**settings)`` → (port, key): gunicorn reading from the replica."""
    services.collaborative_model_train(
        version_id=services.collaborative_version_create(params=LearnerParams(factors=8, iterations=5)).pk
    )
    _, key = api_key_create(name="replica-test", scopes=["read", "write"])
    replica.resume()
    caught_up(replica)
    processes: list[subprocess.Popen[bytes]] = []

    def web(**settings: str) -> tuple[str, str]:
        port = str(free_port())
        env = {
            **live_env,
            "PORT": port,
            "DATABASE_REPLICA_URLS": replica.url(connection.settings_dict["NAME"]),
            "RECSYS_ANSWER_CACHE_SECONDS": "0",  # every answer is read from a database
            "RECSYS_REPLICA_CHECK_SECONDS": "0.5",
            "RECSYS_SEARCH_PRELOAD": "false",
            **settings,
        }
        log = (tmp_path / f"web-{port}.log").open("wb")
        proc = subprocess.Popen(process_commands(port)["web"], env=env, stdout=log, stderr=log)
        processes.append(proc)
        wait_for_health(port, proc, seconds=60)
        return port, key

    yield web
    for proc in processes:
        proc.terminate()
        proc.wait(timeout=30)
    for log in tmp_path.glob("web-*.log"):
        print(log.read_text(errors="replace")[-3000:])
    if replica.running():
        replica.resume()


def recommended(port: str, key: str, user: str) -> list[str]:
    return [item["id"] for item in ok(http(port, key, "GET", f"/api/v1/users/{user}/recommendations?limit=5"))["items"]]


def replica_of(port: str) -> dict[str, Any]:
    return ok(http(port, "", "GET", "/api/v1/health"))["replicas"][0]


def replica_clients(replica: StreamingReplica) -> int:
    """Client connections to the test database on the replica (gunicorn's persistent ones)."""
    rows = replica.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = %s",
        [connection.settings_dict["NAME"]],
    )
    return int(rows[0][0])


def test_reads_hit_the_replica_until_it_lags_past_the_bound(served, replica):
    # One web process: health is each process's own measure, and this test reads it back.
    port, key = served(RECSYS_REPLICA_MAX_LAG_SECONDS="3", WEB_CONCURRENCY="1")
    top = recommended(port, key, "u1")[0]
    assert replica_clients(replica) >= 1
    assert replica_of(port)["state"] == "ok"

    # Given a replica that stopped replaying just after the primary's latest commit
    Item.objects.filter(external_id="i0").update(title="touched")  # a commit of now, replayed
    caught_up(replica)
    replica.pause()
    # When the catalogue changes on the primary (u1 wrote nothing: no read-your-writes for them)
    Item.objects.filter(external_id=top).update(is_hidden=True)

    # Then u1 is still served the replica's catalogue while its lag is within the bound
    assert top in recommended(port, key, "u1"), "the answer did not come from the paused replica"
    # And once the lag passes the bound, the replica is skipped and the primary answers
    poll(lambda: replica_of(port)["state"] == "lagging", 15, "the replica to be reported lagging")
    health = replica_of(port)
    assert health["lag_seconds"] > 3, health
    assert top not in recommended(port, key, "u1")


def test_a_user_who_just_wrote_reads_their_writes_while_the_replica_lags(served, replica):
    # The paused replica stays in use; one web process, so that its health is the one read back.
    port, key = served(RECSYS_REPLICA_MAX_LAG_SECONDS="120", WEB_CONCURRENCY="1")
    top = recommended(port, key, "u2")[0]
    replica.pause()

    # When u2 sends an interaction with their top item (their seen items are not recommended)
    event = {"user": "u2", "item": top, "type": "purchase", "timestamp": "2026-02-01T00:00:00Z"}
    ok(http(port, key, "POST", "/api/v1/interactions", {"interactions": [event]}))

    # Then their next answer already leaves it out (read from the primary) ...
    assert top not in recommended(port, key, "u2")
    history = ok(http(port, key, "GET", "/api/v1/users/u2/interactions?limit=50"))
    assert any(row["item"] == top for row in history["interactions"]), history
    # ... although the replica, still serving everyone else, has not seen the interaction
    assert replica_of(port)["state"] == "ok"
    seen_there = replica.execute(
        "SELECT count(*) FROM recsys_interaction x JOIN recsys_user u ON u.id = x.user_id "
        "JOIN recsys_item i ON i.id = x.item_id WHERE u.external_id = 'u2' AND i.external_id = %s",
        [top],
        database=connection.settings_dict["NAME"],
    )
    assert seen_there == [(0,)]


def test_a_replica_stopped_under_load_costs_no_client_an_error(served, replica):
    port, key = served(RECSYS_REPLICA_MAX_LAG_SECONDS="5")
    paths = [f"/api/v1/users/u{n}/recommendations" for n in range(8)]
    paths += ["/api/v1/items/popular", "/api/v1/items/i3/similar", "/api/v1/users/u5"]
    statuses: list[int] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        n = offset
        while not stop.is_set():
            statuses.append(http(port, key, "GET", paths[n % len(paths)], timeout=15).status)
            n += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        before = len(statuses)
        replica.kill()  # immediate shutdown: open connections break mid-use
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert before > 10 and len(statuses) > before + 10, (before, len(statuses))
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert replica_of(port) == {"alias": "replica_1", "state": "down", "lag_seconds": None}
