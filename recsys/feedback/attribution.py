"""Attribution: a click-type event credited to the recommendation it names, or else to the latest
impression that showed its item to its user within RECSYS_ATTRIBUTION_WINDOW before it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np

from recsys.feedback.store import ClickArrays, attributions_write, impressions_within
from recsys.ingestion.rules import EPOCH, EventArrays, EventRules
from recsys.recommendation_ids import recommendation_id_read

_MICROSECOND = timedelta(microseconds=1)


def clicks_attribute(*, events: EventArrays, rules: EventRules, recommendation_ids: Sequence[str | None] | None) -> int:
    """Attribute the click-type events among ``events`` (aligned with ``recommendation_ids``); runs inside
    the caller's transaction, one statement. Returns how many attributions are new."""
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
        )
    )
