"""Recommendation ids carry the time and the experiment variant that served the answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recsys.recommendation_ids import recommendation_id_mint, recommendation_id_read

pytestmark = pytest.mark.unit


def test_an_id_without_experiment_reads_back_its_time_and_no_variant():
    before = datetime.now(UTC) - timedelta(milliseconds=5)
    ref = recommendation_id_read(recommendation_id_mint())
    assert ref is not None
    assert ref.experiment_id is None and ref.variant is None
    assert before <= ref.issued_at <= datetime.now(UTC) + timedelta(milliseconds=5)


def test_an_experiment_id_reads_back_its_experiment_and_variant():
    ref = recommendation_id_read(recommendation_id_mint(experiment_id=42, variant="b-ranked"))
    assert ref is not None and (ref.experiment_id, ref.variant) == (42, "b-ranked")


def test_ids_are_unique_and_fit_the_column():
    ids = {recommendation_id_mint(experiment_id=123456789, variant="x" * 32) for _ in range(2_000)}
    assert len(ids) == 2_000 and max(map(len, ids)) <= 80


@pytest.mark.parametrize("value", [None, 12, "", "abc", "r1.short", "r" + "z" * 100, "rzz.AAAAAAAAAAAA.e1.Bad Name"])
def test_foreign_ids_read_as_none(value):
    assert recommendation_id_read(value) is None


def test_a_variant_outside_the_slug_rule_is_refused_when_minting():
    with pytest.raises(ValueError):
        recommendation_id_mint(experiment_id=1, variant="Not A Slug")
    with pytest.raises(ValueError):
        recommendation_id_mint(experiment_id=1)
