"""Serving a personalised answer the way the request's experiment variant says."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from embeddings.recommendations import Answer, user_recommendations_list
from experiments.selectors import Assignment

# A variant's strategy → the personalised service's source.
_SOURCES = {"collaborative": "auto", "shuffled": "auto", "ranked": "auto", "content": "content", "popular": "popular"}


def variant_user_recommendations(*, assignment: Assignment | None, **request: Any) -> Answer:
    """The personalised answer for ``request`` (the keywords of user_recommendations_list) under the
    variant's config: its model version, strategy, diversity (overriding the request's) and
    whether the scenario's rules apply. Without an assignment, the request as it came."""
    if assignment is None:
        return user_recommendations_list(**request)
    variant = assignment.variant
    config = variant.config
    if config.diversity is not None:
        request["diversity"] = config.diversity
    answer = user_recommendations_list(
        **request,
        version=variant.version,
        source=_SOURCES[config.strategy],
        ranking=config.strategy == "ranked",
        apply_scenario_rules=config.scenario_rules,
    )
    if config.strategy == "shuffled":
        # Metarank's baseline: the collaborative answer in random order (each item keeps its score).
        items = list(answer.items)
        random.shuffle(items)
        answer = replace(answer, items=items, strategy="shuffled")
    return answer
