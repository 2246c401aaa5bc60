"""Interactions by time: the migration keeps every row, monthly and yearly spans, partitions split DEFAULT, retention,
bulk loads."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from recsys import partitions
from recsys.ingestion import events
from recsys.ingestion.events import interactions_load
from recsys.ingestion.readers import csv_events_read
from recsys.models import Interaction
from tests.factories import InteractionFactory, ItemFactory, UserFactory

pytestmark = pytest.mark.django_db


def rows_by_partition() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text, count(*) FROM recsys_interaction GROUP BY 1")
        return dict(cursor.fetchall())


def stored() -> list[tuple[Any, ...]]:
    return list(
        Interaction.objects.order_by("user__external_id", "item__external_id", "event_type", "timestamp").values_list(
            "user__external_id", "item__external_id", "event_type", "value", "weight", "timestamp"
        )
    )


def at(year: int, month: int, day: int = 1, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
def test_migrating_an_existing_table_keeps_every_row_and_id() -> None:
    # Given the unpartitioned table (the migration before 0007) with rows across three months and a gap
    executor = MigrationExecutor(connection)
    executor.migrate([("recsys", "0006_rules")])
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO recsys_user (external_id, attributes, created_at, updated_at)"
            " SELECT 'u' || g, '{}', now(), now() FROM generate_series(1, 30) g"
        )
        cursor.execute(
            "INSERT INTO recsys_item (external_id, title, text, categories, attributes, is_hidden, is_stub,"
            " created_at, updated_at) SELECT 'i' || g, '', '', '{}', '{}', false, false, now(), now()"
            " FROM generate_series(1, 20) g"
        )
        cursor.execute(
            "INSERT INTO recsys_interaction (user_id, item_id, event_type, value, weight, timestamp)"
            " SELECT u.id, i.id, CASE WHEN i.id % 2 = 0 THEN 'rating' ELSE 'view' END,"
            " CASE WHEN i.id % 2 = 0 THEN 4.5 END, 1.5, timestamptz '2021-01-20'"
            " + (substr(u.external_id, 2)::int * 20 + substr(i.external_id, 2)::int) * interval '3 hours'"
            " FROM recsys_user u, recsys_item i"
        )
        cursor.execute("SELECT * FROM recsys_interaction ORDER BY id")
        before = cursor.fetchall()

    # When migrating forward
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    # Then every row is there with its id, spread over monthly partitions, and new ids follow on
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM recsys_interaction ORDER BY id")
        assert cursor.fetchall() == before
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'recsys_interaction'")
        assert cursor.fetchone()[0] == "p"
    assert len(before) == 600
    assert {"recsys_interaction_p202101", "recsys_interaction_p202102"} <= set(rows_by_partition())
    assert sum(rows_by_partition().values()) == 600
    newest = InteractionFactory(timestamp=at(2021, 2, 3))
    assert newest.pk > max(row[0] for row in before)


def test_a_partition_created_for_a_month_with_rows_in_default_moves_them() -> None:
    # Given events of a month without a partition (they land in DEFAULT)
    InteractionFactory.create_batch(3, timestamp=at(2015, 3, 10))
    InteractionFactory(timestamp=at(2015, 4, 1))
    assert rows_by_partition() == {"recsys_interaction_default": 4}

    # When the month's partition is created
    assert partitions.partition_create(span=partitions.Span.month(date(2015, 3, 1)))

    # Then its rows moved there; the other month's stay in DEFAULT; a second create, or one of an overlapping
    # span, changes nothing
    assert rows_by_partition() == {"recsys_interaction_p201503": 3, "recsys_interaction_default": 1}
    assert not partitions.partition_create(span=partitions.Span.month(date(2015, 3, 1)))
    assert not partitions.partition_create(span=partitions.Span(date(2015, 1, 1), date(2016, 1, 1)))
    assert Interaction.objects.count() == 4


def test_maintenance_creates_months_ahead_and_moves_default_rows_into_years_and_recent_months(settings: Any) -> None:
    # Given events in DEFAULT: two months of an old year, another old year, and last month
    settings.RECSYS_PARTITIONS_AHEAD = 5
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12
    this_month = partitions.month_of(datetime.now(UTC))
    last_month = partitions.month_add(this_month, -1)
    InteractionFactory(timestamp=at(2014, 7, 4))
    InteractionFactory(timestamp=at(2014, 11, 30, 23))
    InteractionFactory(timestamp=at(2013, 2, 1))
    InteractionFactory(timestamp=at(last_month.year, last_month.month, 2))

    # When maintenance runs
    result = partitions.partitions_maintain()

    # Then the months ahead exist, the old rows moved to their year's partition, last month's to its month's
    spans = {p.span for p in partitions.partitions_list()}
    assert {partitions.Span.month(partitions.month_add(this_month, k)) for k in range(-1, 6)} <= spans
    assert {
        partitions.Span(date(2013, 1, 1), date(2014, 1, 1)),
        partitions.Span(date(2014, 1, 1), date(2015, 1, 1)),
    } <= spans
    assert {"recsys_interaction_p2013", "recsys_interaction_p2014"} <= set(result["created"])
    assert rows_by_partition() == {
        "recsys_interaction_p2014": 2,
        "recsys_interaction_p2013": 1,
        partitions.Span.month(last_month).name: 1,
    }
    assert result["dropped"] == []  # retention is off by default
    assert partitions.partitions_maintain()["created"] == []


def test_maintenance_behind_a_long_reader_of_the_interactions_skips_its_ddl_and_makes_it_on_the_next_run(
    settings: Any,
) -> None:
    import psycopg

    # Given a month ahead that has no partition yet, and another session reading the interactions in a
    # long transaction (a training run's snapshot): creating a partition locks DEFAULT exclusively
    this_month = partitions.month_of(datetime.now(UTC))
    furthest = max(p.span.lower for p in partitions.partitions_list())
    settings.RECSYS_PARTITIONS_AHEAD = (furthest.year - this_month.year) * 12 + furthest.month - this_month.month + 1
    reader = psycopg.connect(**connection.get_connection_params())
    reader.execute("SELECT count(*) FROM recsys_interaction")
    try:
        # When maintenance runs, it does not wait for the reader (every query on the table would queue behind it)
        assert partitions.partitions_maintain()["created"] == []
    finally:
        reader.close()
    # Then the next run makes what was missing
    assert partitions.partitions_maintain()["created"] != []


def test_retention_drops_whole_months_older_than_the_setting(settings: Any) -> None:
    # Given events of two old months, of a recent one and one in DEFAULT
    for month in (date(2016, 1, 1), date(2016, 2, 1)):
        partitions.partition_create(span=partitions.Span.month(month))
    recent = datetime.now(UTC) - timedelta(days=1)
    InteractionFactory(timestamp=at(2016, 1, 5))
    InteractionFactory(timestamp=at(2016, 2, 5))
    InteractionFactory(timestamp=recent)
    settings.RECSYS_INTERACTION_RETENTION_DAYS = 30

    # When maintenance runs with a retention of 30 days
    result = partitions.partitions_maintain()

    # Then the old months are gone as tables, the recent event stays
    assert {"recsys_interaction_p201601", "recsys_interaction_p201602"} <= set(result["dropped"])
    assert list(Interaction.objects.values_list("timestamp", flat=True)) == [recent]


def write_csv(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    path.write_text("user,item,type,value,timestamp\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def test_a_file_of_fresh_months_is_attached_as_partitions_and_a_rerun_changes_nothing(
    tmp_path: Path, settings: Any
) -> None:
    # Given a file over two months nobody sent events for, one event repeated in a later chunk with another value,
    # and months kept monthly back to then
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12 * 100
    rows = [(f"u{k % 4}", f"i{k % 5}", "view", "", f"2019-05-{1 + k:02d}T10:00:00+00:00") for k in range(7)]
    rows += [("u9", "i9", "rating", "2", "2019-06-02T00:00:00+00:00"), ("u1", "i1", "like", "", "2019-06-03T00:00:00Z")]
    rows += [("u9", "i9", "rating", "5", "2019-06-02T00:00:00+00:00")]
    path = write_csv(tmp_path / "events.csv", rows)

    # When it is imported in chunks of three rows
    report = interactions_load(chunks=csv_events_read(path, chunk_rows=3))

    # Then both months are partitions of their own, the repeat stored once with its last value
    assert rows_by_partition() == {"recsys_interaction_p201905": 7, "recsys_interaction_p201906": 2}
    assert (report.rows, report.created, report.updated, report.unchanged) == (10, 9, 0, 1)
    assert Interaction.objects.get(user__external_id="u9").value == 5.0
    first = stored()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'recsys_interaction_load%%'")
        assert cursor.fetchone()[0] == 0  # no load table left behind, indexes renamed with their partition

    # And importing the same file again stores nothing new through the upsert path (the repeat is applied
    # again in file order, 2 then 5, and ends as it was)
    again = interactions_load(chunks=csv_events_read(path, chunk_rows=3))
    assert (again.created, again.updated, again.unchanged) == (0, 2, 8)
    assert stored() == first
    assert rows_by_partition() == {"recsys_interaction_p201905": 7, "recsys_interaction_p201906": 2}


def test_a_file_into_a_month_with_rows_goes_through_the_upsert_into_the_partition_made_for_them(
    tmp_path: Path,
) -> None:
    user, item = UserFactory(external_id="old"), ItemFactory(external_id="kept")
    InteractionFactory(user=user, item=item, event_type="view", timestamp=at(2018, 8, 1))
    path = write_csv(
        tmp_path / "events.csv",
        [("old", "kept", "view", "", "2018-08-01T00:00:00Z"), ("new", "kept", "view", "", "2018-08-09T00:00:00Z")],
    )

    report = interactions_load(chunks=csv_events_read(path))

    assert (report.created, report.unchanged) == (1, 1)
    # The API's row waited in DEFAULT (no partition for 2018 yet): the span got its partition before the
    # file's rows were upserted, instead of piling them up in DEFAULT for the beat to move in one go.
    assert rows_by_partition() == {"recsys_interaction_p2018": 2}


def test_events_sent_to_a_loading_month_meanwhile_join_the_attached_partition() -> None:
    # Given a load table for a fresh month, and an API event of that month that arrived in DEFAULT meanwhile
    month = date(2017, 9, 1)
    table = partitions.partition_load_create(span=partitions.Span.month(month))
    user, item = UserFactory(), ItemFactory()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (user_id, item_id, event_type, weight, timestamp) VALUES (%s, %s, 'view', 1, %s)",
            [user.pk, item.pk, at(2017, 9, 2)],
        )
    InteractionFactory(user=user, item=item, event_type="like", timestamp=at(2017, 9, 3))

    # When the load is attached
    assert partitions.partition_load_attach(table=table, span=partitions.Span.month(month)) == 1

    # Then the month's partition holds both
    assert rows_by_partition() == {"recsys_interaction_p201709": 2}


def test_load_tables_of_sessions_that_are_gone_are_swept() -> None:
    live = partitions.partition_load_create(span=partitions.Span.month(date(2019, 1, 1)))
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {partitions.LOAD_PREFIX}99999999_201901_abcdef (LIKE recsys_interaction)")

    swept = partitions.partition_loads_sweep()

    assert swept == [f"{partitions.LOAD_PREFIX}99999999_201901_abcdef"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [live])
        assert cursor.fetchone()[0]


def test_the_dashboard_estimate_of_interactions_sums_the_analysed_partitions(monkeypatch: Any) -> None:
    from recsys import admin_selectors

    InteractionFactory.create_batch(4, timestamp=at(2015, 5, 5))
    InteractionFactory.create_batch(2, timestamp=at(2015, 6, 5))
    for month in (date(2015, 5, 1), date(2015, 6, 1)):
        partitions.partition_create(span=partitions.Span.month(month))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE recsys_interaction_p201505, recsys_interaction_p201506")
    monkeypatch.setattr(admin_selectors, "EXACT_COUNT_BELOW", 3)

    assert admin_selectors.table_row_count(table="recsys_interaction") == admin_selectors.RowCount(6, exact=False)


def recent_month(back: int) -> date:
    return partitions.month_add(partitions.month_of(datetime.now(UTC)), -back)


def test_a_file_spanning_many_years_lands_every_row_in_years_and_recent_months(tmp_path: Path, settings: Any) -> None:
    # Given a file of events from 2003 to last month, three per month in 2003–2012, and two recent months
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12
    rows = [
        (f"u{k}", f"i{year % 7}", "view", "", f"{year}-{month:02d}-{3 + 9 * k:02d}T12:00:00Z")
        for year in range(2003, 2013)
        for month in range(1, 13)
        for k in range(3)
    ]
    recent = [recent_month(2), recent_month(1)]
    rows += [("u1", f"r{n}", "like", "", f"{m.isoformat()}T08:00:00Z") for n, m in enumerate(recent)]
    path = write_csv(tmp_path / "events.csv", rows)

    # When it is imported in chunks of 50 rows
    report = interactions_load(chunks=csv_events_read(path, chunk_rows=50))

    # Then every row is stored, in one partition per old year and one per recent month
    assert (report.rows, report.created, report.rejected) == (362, 362, 0)
    expected = {f"recsys_interaction_p{year}": 36 for year in range(2003, 2013)}
    expected |= {partitions.Span.month(m).name: 1 for m in recent}
    assert rows_by_partition() == expected
    assert Interaction.objects.count() == 362

    # And importing it again changes nothing
    again = interactions_load(chunks=csv_events_read(path, chunk_rows=50))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 362)
    assert rows_by_partition() == expected


def test_a_file_into_a_database_partitioned_by_month_before_keeps_its_months(tmp_path: Path) -> None:
    # Given the monthly layout of before: 2016-03 has rows, 2016-06 is an empty partition
    user, item = UserFactory(external_id="u"), ItemFactory(external_id="i")
    for month in (date(2016, 3, 1), date(2016, 6, 1)):
        partitions.partition_create(span=partitions.Span.month(month))
    InteractionFactory(user=user, item=item, event_type="view", timestamp=at(2016, 3, 9))
    path = write_csv(
        tmp_path / "events.csv",
        [("u", "i", "view", "", f"2016-{month:02d}-09T00:00:00Z") for month in (1, 3, 4, 6, 11)],
    )

    # When a file of 2016 is imported
    report = interactions_load(chunks=csv_events_read(path))

    # Then March took the upsert, the gaps and the empty June became partitions of their own, every row landed
    assert (report.created, report.unchanged) == (4, 1)
    assert rows_by_partition() == {
        "recsys_interaction_p201601_201603": 1,
        "recsys_interaction_p201603": 1,
        "recsys_interaction_p201604_201606": 1,
        "recsys_interaction_p201606": 1,
        "recsys_interaction_p201607_201701": 1,
    }


def test_retention_drops_a_year_only_once_all_of_it_is_past_the_cutoff() -> None:
    # Given the years 2015 and 2016 as partitions, with rows at their ends
    for year in (2015, 2016):
        partitions.partition_create(span=partitions.Span(date(year, 1, 1), date(year + 1, 1, 1)))
        InteractionFactory(timestamp=at(year, 12, 31, 23))

    # When retention keeps what is newer than mid-2016
    dropped = partitions.partitions_drop_before(cutoff=at(2016, 7, 1))

    # Then 2015 is gone; 2016, holding rows inside the window (and older ones), stays whole
    assert dropped == ["recsys_interaction_p2015"]
    assert rows_by_partition() == {"recsys_interaction_p2016": 1}
    assert partitions.partitions_drop_before(cutoff=at(2017, 1, 1)) == ["recsys_interaction_p2016"]


def test_maintenance_merges_an_old_year_split_over_months_into_one_partition_keeping_every_row(settings: Any) -> None:
    # Given 2016 and 2017 partitioned by month as before (2016: three months with rows, one empty, a row in
    # DEFAULT in a month without a partition), and 2010 as one year's partition
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12
    for month in (date(2016, 2, 1), date(2016, 3, 1), date(2016, 9, 1), date(2016, 12, 1), date(2017, 1, 1)):
        partitions.partition_create(span=partitions.Span.month(month))
    partitions.partition_create(span=partitions.Span(date(2017, 4, 1), date(2018, 1, 1)))
    partitions.partition_create(span=partitions.Span(date(2010, 1, 1), date(2011, 1, 1)))
    for moment in (at(2016, 2, 3), at(2016, 3, 31, 23), at(2016, 9, 1), at(2016, 7, 4), at(2017, 1, 5), at(2010, 5, 5)):
        InteractionFactory(timestamp=moment)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM recsys_interaction ORDER BY id")
        before = cursor.fetchall()
    assert rows_by_partition()["recsys_interaction_default"] == 1

    # When maintenance runs twice
    first = partitions.partitions_maintain()
    second = partitions.partitions_maintain()

    # Then 2016, then 2017, became one partition each, every row kept with its id; 2010 is left alone
    assert (first["rolled_up"], second["rolled_up"]) == (["recsys_interaction_p2016"], ["recsys_interaction_p2017"])
    assert partitions.partitions_maintain()["rolled_up"] == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM recsys_interaction ORDER BY id")
        assert cursor.fetchall() == before
    assert rows_by_partition() == {
        "recsys_interaction_p2016": 4,
        "recsys_interaction_p2017": 1,
        "recsys_interaction_p2010": 1,
    }
    old = [p.name for p in partitions.partitions_list() if p.span.lower.year < 2018]
    assert old == ["recsys_interaction_p2010", "recsys_interaction_p2016", "recsys_interaction_p2017"]
    InteractionFactory(timestamp=at(2016, 6, 6))  # the merged year takes new rows
    assert rows_by_partition()["recsys_interaction_p2016"] == 5


# ---- a fresh span loaded on connections of its own (an import outside any transaction) ----------------


def event_types_seed() -> None:
    """An earlier transactional test's flush empties the seeded event types: put them back."""
    from recsys.migrations._event_type_defaults import event_types_seed as seed
    from recsys.models import EventType

    seed(EventType)


def may_2019_rows() -> list[tuple[str, str, str, str, str]]:
    """Nine events of May 2019, the third chunk of three rows repeating the first row with a value."""
    rows = [(f"u{k % 4}", f"i{k % 5}", "view", "", f"2019-05-{1 + k:02d}T10:00:00+00:00") for k in range(8)]
    return [*rows, ("u0", "i0", "view", "3", "2019-05-01T10:00:00+00:00")]


def load_tables() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'recsys_interaction_load%%'")
        return int(cursor.fetchone()[0])


def thread_names(monkeypatch: Any, module: Any, name: str) -> list[str]:
    """Record the thread that runs each call of ``module.name``."""
    names: list[str] = []
    original = getattr(module, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return names


@pytest.mark.django_db(transaction=True)
def test_a_fresh_month_imported_outside_a_transaction_is_copied_and_indexed_on_connections_of_its_own(
    tmp_path: Path, settings: Any, monkeypatch: Any
) -> None:
    # Given a file of a month nobody sent events for, one event repeated in its last chunk with a value
    event_types_seed()
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12 * 100
    path = write_csv(tmp_path / "events.csv", may_2019_rows())
    copies = thread_names(monkeypatch, events, "events_load")
    builds = thread_names(monkeypatch, partitions, "_index_build_alone")

    # When a caller outside any transaction (a management command) imports it in chunks of three rows
    report = interactions_load(chunks=csv_events_read(path, chunk_rows=3))

    # Then the chunks were COPYed on the copy thread and the five indexes built on threads of their own
    assert copies == ["import-copy"] * 3
    assert len(builds) == 5 and all(name.startswith("import-index") for name in builds)
    # And the month is a partition whose indexes and keys are those ATTACH adopted, the repeat stored once
    # with its last value (the unique index's build found the repeat; the attach removed it, then built it)
    assert (report.created, report.unchanged, report.rejected) == (8, 1, 0)
    assert rows_by_partition() == {"recsys_interaction_p201905": 8}
    assert Interaction.objects.get(user__external_id="u0", item__external_id="i0").value == 3.0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, contype FROM pg_constraint WHERE conrelid = 'recsys_interaction_p201905'::regclass"
            " AND contype IN ('p', 'u')"
        )
        assert sorted(cursor.fetchall()) == [
            ("recsys_interaction_p201905_event", "u"),
            ("recsys_interaction_p201905_pkey", "p"),
        ]
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'recsys_interaction_p201905'")
        suffixes = sorted(name.removeprefix("recsys_interaction_p201905_") for (name,) in cursor.fetchall())
    assert suffixes == ["created", "event", "history", "item_time", "pkey"]
    assert load_tables() == 0

    # And the same file again changes nothing
    again = interactions_load(chunks=csv_events_read(path, chunk_rows=3))
    assert (again.created, again.updated, again.unchanged) == (0, 2, 7)  # the repeat: none then 3, in file order
    assert rows_by_partition() == {"recsys_interaction_p201905": 8}


@pytest.mark.django_db(transaction=True)
def test_a_copy_that_fails_on_its_thread_fails_the_import_and_leaves_the_month_fresh(
    tmp_path: Path, settings: Any, monkeypatch: Any
) -> None:
    # Given a fresh month's file whose second chunk's COPY fails on the copy thread
    event_types_seed()
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12 * 100
    path = write_csv(tmp_path / "events.csv", may_2019_rows())
    original, calls = events.events_load, []

    def failing(*args: Any, **kwargs: Any) -> int:
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise RuntimeError("no space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(events, "events_load", failing)

    # When it is imported, the import fails with that error
    with pytest.raises(RuntimeError, match="no space left"):
        interactions_load(chunks=csv_events_read(path, chunk_rows=3))

    # Then no event is stored, no load table is left and the month is still fresh
    assert calls[:2] == ["import-copy", "import-copy"]
    assert rows_by_partition() == {}
    assert load_tables() == 0
    assert partitions.span_is_fresh(span=partitions.Span.month(date(2019, 5, 1)))

    # And importing it again stores it whole
    monkeypatch.setattr(events, "events_load", original)
    report = interactions_load(chunks=csv_events_read(path, chunk_rows=3))
    assert (report.created, report.rejected) == (8, 0)
    assert rows_by_partition() == {"recsys_interaction_p201905": 8}


@pytest.mark.django_db(transaction=True)
def test_an_import_that_fails_while_attaching_leaves_no_partition_half_attached(
    tmp_path: Path, settings: Any, monkeypatch: Any
) -> None:
    # Given a fresh month's file, indexed on connections of their own, whose attach fails after ATTACH PARTITION ran
    event_types_seed()
    settings.RECSYS_PARTITIONS_MONTHLY_MONTHS = 12 * 100
    path = write_csv(tmp_path / "events.csv", may_2019_rows())
    attach = partitions._load_attach

    def attach_then_fail(*args: Any) -> None:
        attach(*args)
        raise RuntimeError("connection lost")

    monkeypatch.setattr(partitions, "_load_attach", attach_then_fail)

    # When it is imported, the import fails
    with pytest.raises(RuntimeError, match="connection lost"):
        interactions_load(chunks=csv_events_read(path, chunk_rows=3))

    # Then the attach was undone whole: no partition of the month, no load table (nor its indexes) left
    assert rows_by_partition() == {}
    assert load_tables() == 0
    assert partitions.span_is_fresh(span=partitions.Span.month(date(2019, 5, 1)))
