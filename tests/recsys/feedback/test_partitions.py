"""Impression partitions: created ahead, dropped whole past the retention, recent rows kept."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest
from django.db import connection

from recsys.feedback.partitions import (
    impression_partitions_ensure,
    impression_partitions_list,
    impression_partitions_maintain,
    months_of,
    partition_name,
)
from recsys.feedback.tasks import impression_partitions_maintain as maintain_task
from recsys.models import Impression
from tests.factories import ItemFactory, UserFactory

NOW = datetime(2031, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.unit
def test_months_of_timestamps_are_their_distinct_first_days():
    micros = np.array(
        [
            datetime(2031, 1, 31, 23, 59, tzinfo=UTC).timestamp() * 1e6,
            datetime(2031, 2, 1, tzinfo=UTC).timestamp() * 1e6,
        ]
        * 2,
        dtype=np.int64,
    )
    assert months_of(micros) == [date(2031, 1, 1), date(2031, 2, 1)]
    assert partition_name(date(2031, 2, 1)) == "recsys_impression_y2031m02"


@pytest.mark.django_db
def test_maintenance_creates_this_month_and_the_next_ones_once():
    report = impression_partitions_maintain(now=NOW, retention_days=0)

    assert report.created == [date(2031, 6, 1), date(2031, 7, 1), date(2031, 8, 1)]
    assert impression_partitions_maintain(now=NOW, retention_days=0).created == []


def _impression(user, item, when: datetime) -> None:
    impression_partitions_ensure(months=[when.date()])
    Impression.objects.create(user=user, item=item, position=1, shown_at=when)


@pytest.mark.django_db
def test_partitions_past_the_retention_are_dropped_with_their_rows_and_recent_ones_stay():
    user, item = UserFactory(), ItemFactory()
    _impression(user, item, datetime(2031, 3, 31, 23, 0, tzinfo=UTC))  # March ends before the horizon
    _impression(user, item, datetime(2031, 4, 20, tzinfo=UTC))  # April straddles it: kept whole
    _impression(user, item, datetime(2031, 6, 1, tzinfo=UTC))

    report = impression_partitions_maintain(now=NOW, retention_days=60)  # horizon: 2031-04-16

    assert date(2031, 3, 1) in report.dropped and date(2031, 4, 1) not in report.dropped
    assert all(month < date(2031, 4, 1) for month in report.dropped)
    assert date(2031, 3, 1) not in impression_partitions_list()
    assert sorted(Impression.objects.values_list("shown_at__month", flat=True)) == [4, 6]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('recsys_impression_y2031m03')")
        assert cursor.fetchone()[0] is None


@pytest.mark.django_db
def test_without_retention_nothing_is_dropped():
    user, item = UserFactory(), ItemFactory()
    _impression(user, item, datetime(2001, 1, 1, tzinfo=UTC))

    assert impression_partitions_maintain(now=NOW, retention_days=0).dropped == []
    assert Impression.objects.count() == 1


@pytest.mark.django_db
def test_the_beat_task_reports_what_it_did(settings):
    settings.RECSYS_IMPRESSION_RETENTION_DAYS = 0
    result = maintain_task.apply().get()
    assert set(result) == {"created", "dropped"} and result["dropped"] == []


@pytest.mark.django_db
def test_impressions_a_running_experiment_reads_outlive_their_retention():
    from experiments.models import Experiment

    user, item = UserFactory(), ItemFactory()
    _impression(user, item, datetime(2031, 3, 20, tzinfo=UTC))
    # An experiment running since mid-March: its CTR would lose March's impressions, not its conversions
    Experiment.objects.create(
        name="long", control="a", status="running", scenario="x", started_at=datetime(2031, 3, 15, tzinfo=UTC)
    )

    report = impression_partitions_maintain(now=NOW, retention_days=60)  # horizon: 2031-04-16

    assert date(2031, 3, 1) not in report.dropped and Impression.objects.count() == 1
    Experiment.objects.update(status="stopped", stopped_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert date(2031, 3, 1) in impression_partitions_maintain(now=NOW, retention_days=60).dropped
