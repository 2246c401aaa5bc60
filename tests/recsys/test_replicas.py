"""Replica routing in one process: which alias serves, how a failing or non-standby replica is
judged, and read-your-writes marks in Redis (the streaming-replica tests are in tests/integration)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend

from recsys import replicas
from recsys.models import Item
from recsys.selectors import user_get

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")


@pytest.fixture
def add_replica(settings, transactional_db: None) -> Iterator[Callable[..., str]]:
    """``add_replica(**overrides)`` → a replica alias that is really the primary's test database,
    or, with overrides (e.g. a closed port), a server that is not there."""
    added: list[str] = []

    def add(**overrides: object) -> str:
        alias = f"replica_{len(added) + 1}"
        config = {**connections.settings[DEFAULT_DB_ALIAS], **overrides}
        config["OPTIONS"] = {**config["OPTIONS"], "connect_timeout": 1}
        settings.DATABASES = {**settings.DATABASES, alias: config}
        # A connection made here (Django's test case allows those) rather than from settings.
        connections[alias] = load_backend(config["ENGINE"]).DatabaseWrapper(config, alias)
        added.append(alias)
        return alias

    replicas.replica_health_forget()
    yield add
    for alias in added:
        connections[alias].close()
        del connections[alias]
    replicas.replica_health_forget()


def test_without_replicas_every_read_goes_to_the_primary(transactional_db):
    assert replicas.serving_alias(user="u1") == DEFAULT_DB_ALIAS
    assert replicas.replicas_health() == []


def test_a_server_that_is_not_a_standby_is_reported_down_and_never_read(add_replica):
    alias = add_replica()
    health = replicas.replica_health(alias=alias)
    assert (health.state, health.lag_seconds) == ("down", None)
    assert "not a standby" in health.detail
    assert replicas.serving_alias() == DEFAULT_DB_ALIAS


def test_a_standby_behind_that_has_replayed_no_commit_since_it_started_is_lagging_not_ok(add_replica, monkeypatch):
    # A standby that cannot resume streaming: behind the primary, pg_last_xact_replay_timestamp() NULL
    # (before: lag 0, "ok", and it served reads of any age)
    alias = add_replica()
    monkeypatch.setattr(replicas, "_REPLAY", "SELECT true, %s::text IS NULL, NULL::float8")
    monkeypatch.setattr(replicas, "RECHECK_PAUSE_SECONDS", 0.0)

    health = replicas.replica_check(alias=alias)

    assert (health.state, health.lag_seconds) == ("lagging", None)
    assert replicas.serving_alias() == DEFAULT_DB_ALIAS


def test_a_replica_that_does_not_answer_is_measured_down_and_skipped(add_replica):
    alias = add_replica(PORT="1")  # nothing listens there
    assert replicas.replica_health(alias=alias).state == "down"
    assert replicas.serving_alias() == DEFAULT_DB_ALIAS


def test_a_read_on_a_replica_that_fails_is_answered_by_the_primary_and_marks_it_down(add_replica, monkeypatch):
    Item.objects.create(external_id="kept")
    alias = add_replica(PORT="1")
    # Measured ok a moment ago; it has gone away since.
    monkeypatch.setattr(replicas, "replica_health", lambda alias: replicas.ReplicaHealth(alias, "ok", 0.0, 0.0))
    assert replicas.serving_alias() == alias

    found = replicas.serving_read(lambda: list(Item.objects.values_list("external_id", flat=True)))

    assert found == ["kept"]
    monkeypatch.undo()
    assert replicas.replica_health(alias=alias).state == "down"


def test_a_user_who_wrote_reads_the_primary_for_the_configured_time(add_replica, settings):
    add_replica()
    settings.RECSYS_READ_YOUR_WRITES_SECONDS = 30
    replicas.users_wrote(external_ids=["writer"])  # outside a transaction: marked at once
    replicas.replica_health_forget()  # as another web process: only Redis knows

    assert replicas.user_recently_wrote(external_id="writer")
    assert not replicas.user_recently_wrote(external_id="reader")


def test_without_redis_a_user_reads_the_primary(add_replica, redis_down):
    assert replicas.user_recently_wrote(external_id="anyone")


def test_serving_selectors_read_the_chosen_replica(add_replica, monkeypatch):
    """The router sends the ORM's reads of a serving selector to the alias chosen for it."""
    from recsys.models import User

    User.objects.create(external_id="someone")
    alias = add_replica()
    monkeypatch.setattr(replicas, "serving_alias", lambda user=None: alias)
    used: list[str] = []

    def record(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        used.append(context["connection"].alias)
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(record), connections[DEFAULT_DB_ALIAS].execute_wrapper(record):
        assert user_get(external_id="someone").external_id == "someone"
    # Every statement on the chosen alias, none on the primary. (Sometimes 3 rather than 1: a new
    # connection's own setup statements on a loaded machine, seen in CI; which ones was not traced.)
    assert used and set(used) == {alias}


def test_settings_turn_replica_urls_into_database_aliases():
    """Each URL of DATABASE_REPLICA_URLS is an alias with the primary's options and the test mirror."""
    script = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'recsys.settings'; django.setup();"
        "from django.conf import settings as s; r = s.DATABASES['replica_2'];"
        "print(sorted(s.DATABASES), r['HOST'], r['PORT'], r['OPTIONS']['options'], r['OPTIONS']['connect_timeout'],"
        " r['TEST']['MIRROR'], s.RECSYS_READ_YOUR_WRITES_SECONDS)"
    )
    env = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/recsys",
        "DATABASE_REPLICA_URLS": "postgresql://u@10.0.0.2:5433/recsys, postgresql://u@10.0.0.3:5434/recsys",
        "RECSYS_STATEMENT_TIMEOUT_MS": "9000",
        "RECSYS_INSECURE_DEV_KEY": "true",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == (
        "['default', 'replica_1', 'replica_2'] 10.0.0.3 5434 -c statement_timeout=9000 1 default 9.0"
    ), done.stderr


def test_a_serving_request_bounds_its_replica_statements_by_the_time_it_has_left(add_replica, monkeypatch):
    from django.db import OperationalError

    from recsys.deadline import deadline_arm, deadline_begin, deadline_end

    alias = add_replica()
    monkeypatch.setattr(replicas, "replica_health", lambda alias: replicas.ReplicaHealth(alias, "ok", 0.0, 0.0))

    def slow() -> None:
        with replicas.read_connection().cursor() as cursor:
            assert cursor.db.alias == alias
            cursor.execute("SELECT pg_sleep(3)")

    deadline_begin()
    deadline_arm(milliseconds=300)
    started = time.monotonic()
    try:
        # Then it is cut at the request's limit, and not run again on the primary
        with pytest.raises(OperationalError, match="statement timeout"):
            replicas.serving_read(slow)
    finally:
        deadline_end()
    assert time.monotonic() - started < 1.5
    # And a later read that is not a serving request runs at the connection's default again
    replicas.serving_read(lambda: None)
    assert getattr(connections[alias], "recsys_statement_timeout", None) is None


def test_a_request_naming_a_user_for_their_hidden_items_reads_the_primary_after_they_wrote(add_replica, monkeypatch):
    # similar, session, popular and search name the user in their rules (user=): hiding an item must
    # take effect on that user's next request there too (before: only personalised read the primary)
    from recsys.rules.ruleset import RuleSet

    alias = add_replica()
    monkeypatch.setattr(replicas, "replica_health", lambda alias: replicas.ReplicaHealth(alias, "ok", 0.0, 0.0))
    replicas.users_wrote(external_ids=["hider"])

    @replicas.replica_reads()
    def selector(*, rules: RuleSet) -> str:
        return replicas.read_alias()

    assert selector(rules=RuleSet(hidden_for="hider")) == DEFAULT_DB_ALIAS
    assert selector(rules=RuleSet(hidden_for="someone-else")) == alias
    assert selector(rules=RuleSet()) == alias


def test_a_popular_ranking_is_read_from_the_primary_while_replicas_may_lag_behind_a_catalogue_change(
    add_replica, monkeypatch, settings
):
    # A ranking computed on a replica that has not replayed a hidden item would be cached under the new
    # generation for everyone (before: for up to a minute)
    from embeddings import popularity
    from embeddings.recommendations import popular_items_list

    alias = add_replica()
    monkeypatch.setattr(replicas, "replica_health", lambda alias: replicas.ReplicaHealth(alias, "ok", 0.0, 0.0))
    read_on: list[str] = []
    ranking = popularity._ranking
    monkeypatch.setattr(
        popularity, "_ranking", lambda *a, **kw: read_on.append(replicas.read_alias()) or ranking(*a, **kw)
    )
    settings.RECSYS_READ_YOUR_WRITES_SECONDS = 30

    popularity.popular_rankings_forget()  # outside a transaction: at once
    popular_items_list(limit=5, window_days=None, category=None)
    settings.RECSYS_READ_YOUR_WRITES_SECONDS = 0  # the replicas have replayed it since
    popularity.popular_rankings_forget()
    popular_items_list(limit=5, window_days=None, category=None)

    assert read_on == [DEFAULT_DB_ALIAS, alias]
