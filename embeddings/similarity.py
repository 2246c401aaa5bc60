"""Item to item: similar items per space (collaborative, content, hybrid, custom) and near-duplicates.

An item without a vector in the asked space falls back: collaborative → content → items sharing
its words → popular in its categories → popular → newest (``similar_fallback``); ``strategy``
names the path that answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from django.conf import settings

from embeddings.models import Kind, ModelVersion, VectorSpace
from embeddings.rules import NO_RULES, RuleSet, answer_rules_apply, rules_resolve
from embeddings.serving import (
    Answer,
    Recommendation,
    active,
    answer_through_cache,
    from_neighbours,
    model_ref,
    query_column,
    version_nearest_items,
)
from embeddings.similar_fallback import item_similar_fallback
from embeddings.vectors.rows import item_vectors_row, vectors_of
from embeddings.vectors.search import Filters, Neighbour, nearest_items
from embeddings.vectors.tables import VECTOR
from recsys.errors import ItemNotFound, ModelNotReady, NotFound
from recsys.replicas import replica_reads
from recsys.validation import BUILT_IN_SPACES, SPACE_NAME_RE

HYBRID_CANDIDATES = 50  # per space, at least; the blend re-scores their union
# per space, at most: limit 200 with a boost's depth asked 2,400 rows of each space (on pgvector 0.6
# an exact scan past the index's 1,000, then every candidate's vectors read from both tables)
HYBRID_MAX_CANDIDATES = 1000


@dataclass
class ItemVectors:
    id: int
    categories: list[str]
    collaborative: npt.NDArray[np.float32] | None  # its query-side vector in the active version
    content: npt.NDArray[np.float32] | None


@replica_reads()
def item_similar_list(
    *,
    item_external_id: str,
    limit: int,
    space: str = Kind.COLLABORATIVE,
    category: str | None = None,
    rules: RuleSet = NO_RULES,
    scenario: str | None = None,
    apply_scenario_rules: bool = True,
) -> Answer:
    """Nearest items to one item in ``space``; see the module docstring for the fallbacks. ``rules``
    and the scenario's filter, boost and pin them; with a user (``rules.hidden_for``) their hidden
    items are skipped and the answer is not cached (hiding must take effect at once)."""
    rules = rules_resolve(rules=rules, scenario=scenario, apply_scenario_rules=apply_scenario_rules)

    def compute(answer: Answer) -> Answer:
        return answer_rules_apply(answer, rules, limit=limit, category=category, exclude=(item_external_id,))

    depth = rules.depth(limit)
    if space in BUILT_IN_SPACES:
        if rules.hidden_for:
            return compute(_similar(item_external_id, depth, space, category, rules))
        variant = json.dumps([space, limit, category]) + rules.key()
        return answer_through_cache(
            f"item:{item_external_id}",
            variant,
            lambda: compute(_similar(item_external_id, depth, space, category, rules)),
        )
    custom = VectorSpace.objects.filter(name=space).first() if SPACE_NAME_RE.fullmatch(space) else None
    if custom is None:  # a well-formed name that no vector was ever put in: 404, like an unknown item
        raise NotFound(
            f"space must be collaborative, content, hybrid or a custom space; {space!r} has no vectors",
            details={"space": ["unknown space"]},
        )
    return compute(_custom_similar(item_external_id, custom, depth, category, rules))


def _item_vectors(external_id: str, collaborative: ModelVersion | None, content: ModelVersion | None) -> ItemVectors:
    """The item and its vectors in both active versions, in one round trip."""

    row = item_vectors_row(
        item_external_id=external_id,
        columns=[
            (collaborative.item_table, query_column(collaborative)) if collaborative else None,
            (content.item_table, "embedding") if content else None,
        ],
    )
    if row is None:
        raise ItemNotFound(f"item {external_id!r} does not exist")
    item_id, categories, (collaborative_vector, content_vector) = row
    return ItemVectors(id=item_id, categories=categories, collaborative=collaborative_vector, content=content_vector)


def _similar(external_id: str, limit: int, space: str, category: str | None, rules: RuleSet) -> Answer:
    collaborative = active(Kind.COLLABORATIVE) if space != Kind.CONTENT else None
    content = active(Kind.CONTENT)
    item = _item_vectors(external_id, collaborative, content)
    filters = Filters((item.id,), category, rules)
    if space == "hybrid" and collaborative and content and item.collaborative is not None and item.content is not None:
        return _hybrid(item, collaborative, content, limit, filters)
    if space != Kind.CONTENT and collaborative and item.collaborative is not None:
        neighbours = version_nearest_items(collaborative, item.collaborative, limit=limit, filters=filters)
        return Answer(from_neighbours(neighbours), model_ref(collaborative), "collaborative")
    if content and item.content is not None:
        neighbours = version_nearest_items(content, item.content, limit=limit, filters=filters)
        return Answer(from_neighbours(neighbours), model_ref(content), "content")
    return _fallback(item, limit, category, rules)


def _fallback(item: ItemVectors, limit: int, category: str | None, rules: RuleSet) -> Answer:
    return item_similar_fallback(
        item_id=item.id, categories=item.categories, limit=limit, category=category, rules=rules
    )


def _hybrid(
    item: ItemVectors, collaborative: ModelVersion, content: ModelVersion, limit: int, filters: Filters
) -> Answer:
    """w × content cosine + (1 - w) × collaborative score scaled to the best candidate's, over
    the union of both spaces' nearest candidates; a candidate with no collaborative vector gets
    only its content share."""
    assert item.collaborative is not None and item.content is not None
    depth = min(max(limit * 4, HYBRID_CANDIDATES), max(HYBRID_MAX_CANDIDATES, limit))
    by_collaborative = version_nearest_items(collaborative, item.collaborative, limit=depth, filters=filters)
    by_content = version_nearest_items(content, item.content, limit=depth, filters=filters)
    names = {n.item_id: n.external_id for n in by_collaborative + by_content}
    until = {n.item_id: n.until for n in by_collaborative + by_content}
    ids = list(names)
    collaborative_scores = _scores(collaborative, ids, item.collaborative)
    content_scores = _scores(content, ids, item.content)
    best = max([s for s in collaborative_scores.values() if s > 0], default=1.0)
    weight = settings.RECSYS_HYBRID_CONTENT_WEIGHT
    blended = {
        i: weight * content_scores.get(i, 0.0) + (1 - weight) * max(collaborative_scores.get(i, 0.0), 0.0) / best
        for i in ids
    }
    ranked = sorted(ids, key=lambda i: (-blended[i], names[i]))[:limit]
    items = [Recommendation(names[i], round(blended[i], 6), until=until[i]) for i in ranked]
    return Answer(items, {"kind": "hybrid", "version": collaborative.pk, "content_version": content.pk}, "hybrid")


def _scores(version: ModelVersion, ids: list[int], query: npt.NDArray[np.float32]) -> dict[int, float]:
    return {i: float(vector @ query) for i, vector in vectors_of(version.item_table, "item_id", ids).items()}


def _custom_similar(external_id: str, space: VectorSpace, limit: int, category: str | None, rules: RuleSet) -> Answer:
    item = _item_vectors(external_id, None, None)
    found = vectors_of(space.table, "item_id", [item.id])
    if item.id not in found:
        return _fallback(item, limit, category, rules)
    filters = Filters((item.id,), category, rules)
    neighbours = nearest_items(space.table, found[item.id], vector_type=VECTOR, limit=limit, filters=filters)
    return Answer(from_neighbours(neighbours), None, "custom")


@replica_reads()
def item_duplicates_list(
    *,
    item_external_id: str,
    threshold: float,
    limit: int,
    category: str | None = None,
    rules: RuleSet = NO_RULES,
    scenario: str | None = None,
) -> Answer:
    """Items whose content vectors have cosine ≥ ``threshold`` with this item's, closest first.
    ``category``, ``rules`` and the scenario's apply as on similar items: the filter narrows the
    items compared, boosts reorder the duplicates found (the threshold holds for the cosine before
    any boost); pins and buries do not apply (they are not duplicates); with a user, their hidden
    items are skipped."""
    # A scenario's pins and buries place items whatever their similarity: on duplicates, none.
    rules = replace(rules_resolve(rules=rules, scenario=scenario, apply_scenario_rules=True), pins=(), buries=())
    content = active(Kind.CONTENT)
    if content is None:
        raise ModelNotReady("no content model is active yet: duplicates need item text encodings")
    item = _item_vectors(item_external_id, None, content)
    neighbours: list[Neighbour] = []
    if item.content is not None:
        filters = Filters((item.id,), category, rules)
        neighbours = version_nearest_items(content, item.content, limit=rules.depth(limit), filters=filters)
    kept = [n for n in neighbours if n.score >= threshold]
    answer = Answer(from_neighbours(kept), model_ref(content), "content")
    return answer_rules_apply(answer, rules, limit=limit, category=category, exclude=(item_external_id,))
