"""The ef_search benchmark's exact answers: the served search skips the user's seen items, so its
truth is the exact top 10 of the items the user has not seen."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from ann_recall import K, exact_top, exact_top_unseen

pytestmark = pytest.mark.unit


def test_the_exact_top_of_unseen_items_skips_what_the_user_has_seen():
    # Given 30 items scored by one query in descending id order, and a user who saw the best three
    items = np.eye(30, dtype=np.float32)
    ids = np.arange(100, 130)
    query = np.arange(30, 0, -1, dtype=np.float32)[None, :]  # item 100 best, 129 worst
    seen = [{100, 101, 102}]

    # When the exact answers are computed with and without the seen items
    unseen = exact_top_unseen(items, ids, query, seen)[0]
    everything = exact_top(items, ids, query)[0]

    # Then the unseen truth is the next K items, and the plain truth still has the seen ones
    assert unseen == set(range(103, 103 + K))
    assert everything == set(range(100, 100 + K))
