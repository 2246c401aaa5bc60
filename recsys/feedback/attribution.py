"""Attribution: a click-type event credited to the recommendation it names, or else to the latest
impression that showed its item to its user within RECSYS_ATTRIBUTION_WINDOW before it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

import numpy as np
from django.db import DatabaseError

from recsys.db import atomic_with_retry
from recsys.feedback.store import ClickArrays, attributions_write, impressions_within
from recsys.ingestion.rules import EPOCH, EventArrays, EventRules
from recsys.recommendation_ids import recommendation_id_read

_MICROSECOND = timedelta(microseconds=1)
logger = logging.getLogger(__name__)


def clicks_attribute(
    *,
    events: EventArrays,
    rules: EventRules,
    recommendation_ids: Sequence[str | None] | None,
    after_commit: bool = False,
) -> int:
    """Attribute the click-type events among ``events`` (aligned with ``recommendation_ids``); runs inside
    the caller's transaction, one statement. Returns how many attributions were written. ``after_commit``:
    the pass again once the events' transaction has committed (``attributions_write``)."""
    if rules.clicks is None or not len(events):
        return 0
    mask = rules.clicks[events.codes]
    if not mask.any():
        return 0
    positions = np.flatnonzero(mask)
    ids: list[str | None] = (
        [None] * len(positions) if recommendation_ids is None else [recommendation_ids[int(k)] for k in positions]
    )
    if not any(ids) and not impressions_within(events.timestamps[positions]):
        return 0  # no id to credit and no impression the window reaches (a bulk import of history)
    refs = [recommendation_id_read(value) if value else None for value in ids]
    codes, values = events.codes[positions], events.values[positions]
    return attributions_write(
        ClickArrays(
            user_ids=events.user_ids[positions],
            item_ids=events.item_ids[positions],
            event_types=[rules.names[code] for code in codes],
            values=values,
            weights=rules.weights_of(codes, values),
            timestamps=events.timestamps[positions],
            recommendation_ids=ids,
            issued_at=[None if ref is None else (ref.issued_at - EPOCH) // _MICROSECOND for ref in refs],
            experiment_ids=[None if ref is None else ref.experiment_id for ref in refs],
            variants=[None if ref is None else ref.variant for ref in refs],
        ),
        after_commit=after_commit,
    )


def attribution_after_commit(attribute: Callable[[], int]) -> None:
    """Run an attribution pass again once its batch's transaction has committed, in a transaction of
    its own (``attributions_write``): a click batch and an impression batch in flight at the same time
    cannot see each other's rows, and the pass of whichever committed last sees both. The batch is
    stored whatever happens here: a failure is logged, and costs at most those attributions."""
    try:
        atomic_with_retry(attribute)
    except DatabaseError:
        logger.warning("attributing a stored batch again after its commit failed", exc_info=True)
