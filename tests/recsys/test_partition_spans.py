"""The span a new interaction partition covers: a month when recent, a year of older history, never overlapping."""

from __future__ import annotations

from datetime import date

import pytest

from recsys.partitions import Span, span_for

pytestmark = pytest.mark.unit

RECENT_FROM = date(2025, 12, 1)


def spans_of(months: list[date], taken: list[Span] | None = None) -> list[Span]:
    """The partitions created, in order, for each month no earlier one holds (as maintenance does)."""
    spans = list(taken or [])
    for month in months:
        if not any(span.holds(month) for span in spans):
            spans.append(span_for(month, taken=spans, recent_from=RECENT_FROM))
    return sorted(spans[len(taken or []) :])


def test_decades_of_history_get_a_partition_per_year_and_recent_months_one_each() -> None:
    # Given a row in every month from January 1996 to this month, December 2026
    months = [date(year, month, 1) for year in range(1996, 2027) for month in range(1, 13)]

    spans = spans_of(months)

    # Then 1996–2024 are a year each, 2025 ends where the months start, and the last 13 months are monthly
    assert spans[:29] == [Span(date(y, 1, 1), date(y + 1, 1, 1)) for y in range(1996, 2025)]
    assert spans[29] == Span(date(2025, 1, 1), date(2025, 12, 1))
    assert spans[30:] == [Span.month(date(2025, 12, 1))] + [Span.month(date(2026, m, 1)) for m in range(1, 13)]
    assert len(spans) == 43  # instead of 372 months
    assert [s.name for s in spans[28:31]] == [
        "recsys_interaction_p2024",
        "recsys_interaction_p202501_202512",
        "recsys_interaction_p202512",
    ]


def test_a_year_already_partitioned_by_month_keeps_its_months_and_fills_the_gaps_between_them() -> None:
    # Given a database partitioned by month before: March and June 2016 exist
    taken = [Span.month(date(2016, 3, 1)), Span.month(date(2016, 6, 1))]

    # When rows arrive for January, April, May and November 2016
    spans = spans_of([date(2016, 1, 1), date(2016, 4, 1), date(2016, 5, 1), date(2016, 11, 1)], taken)

    # Then each gap of the year becomes one partition, none overlapping the months
    assert spans == [
        Span(date(2016, 1, 1), date(2016, 3, 1)),
        Span(date(2016, 4, 1), date(2016, 6, 1)),
        Span(date(2016, 7, 1), date(2017, 1, 1)),
    ]
    assert not any(a.overlaps(b) for a in spans for b in taken)


def test_a_month_already_held_is_refused() -> None:
    with pytest.raises(ValueError, match="recsys_interaction_p2016"):
        span_for(date(2016, 5, 1), taken=[Span(date(2016, 1, 1), date(2017, 1, 1))], recent_from=RECENT_FROM)
