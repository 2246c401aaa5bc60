"""Business rules at serving time: a request's rules merged with its scenario's, and boosts, pins and
buries applied to a widened answer (filters and hidden items are already inside the queries)."""

from __future__ import annotations

from typing import Any

from embeddings.serving import Answer, Recommendation
from embeddings.vectors.tables import cursor
from recsys.rules.ruleset import NO_RULES, RuleSet, boost_columns, item_conditions
from recsys.rules.scenarios import scenario_rules_serving

__all__ = ["NO_RULES", "RuleSet", "answer_rules_apply", "rules_resolve"]


def rules_resolve(*, rules: RuleSet, scenario: str | None, apply_scenario_rules: bool) -> RuleSet:
    """The request's own rules and, unless switched off (an experiment's variant may), its
    scenario's saved ones: both filters must hold and boosts multiply."""
    if not scenario or not apply_scenario_rules:
        return rules
    return rules.merged(scenario_rules_serving(name=scenario))


_CHECK = """
    SELECT i.external_id, extract(epoch FROM i.available_until), {pinnable} AS pinnable {boosts}
    FROM recsys_item i WHERE i.external_id = ANY(%(rule_ids)s)
"""
_PINNABLE = """(i.external_id = ANY(%(rule_pins)s) AND NOT i.is_hidden
    AND i.external_id <> ALL(%(rule_exclude)s::text[]) AND i.id <> ALL(%(rule_exclude_ids)s::int8[])
    {category} {conditions} {unseen})"""
# A personalised answer never holds what the user has seen (API.md), pinned items included.
_UNSEEN = """AND NOT EXISTS (SELECT 1 FROM recsys_interaction x
    WHERE x.user_id = (SELECT id FROM recsys_user WHERE external_id = %(rule_seen_by)s) AND x.item_id = i.id)"""


def answer_rules_apply(
    answer: Answer,
    rules: RuleSet,
    *,
    limit: int,
    category: str | None = None,
    exclude: tuple[str, ...] = (),
    exclude_ids: tuple[int, ...] = (),
    seen_by: str | None = None,
) -> Answer:
    """Boosts multiply the scores of matching candidates (a positive score is multiplied, a
    negative one divided, so a factor above 1 always lifts), buried items go after all others,
    pinned items take their positions when they pass the filters and are not excluded (``exclude``:
    client ids, ``exclude_ids``: database ids; ``seen_by``: nor seen by that user), and the answer is
    cut to ``limit``. Candidates from
    a vector query carry their boost matches; others, and the pins, are checked in one query."""
    if not rules.reorders or (not answer.items and not rules.pins):
        answer.items = answer.items[:limit]
        return answer
    unread = [i.id for i in answer.items if i.boosts is None] if rules.boosts else []
    rows = (
        _checked(unread, rules, (list(exclude), list(exclude_ids)), category, seen_by) if unread or rules.pins else {}
    )
    items = _boosted(answer.items, rows, [b.factor for b in rules.boosts])
    if rules.buries:
        buried = set(rules.buries)
        items = [i for i in items if i.id not in buried] + [i for i in items if i.id in buried]
    answer.items = _pinned(items, rules, rows, limit)
    return answer


def _checked(
    ids: list[str],
    rules: RuleSet,
    excluded: tuple[list[str], list[int]],
    category: str | None,
    seen_by: str | None = None,
) -> dict[str, tuple[Any, ...]]:
    """Per item of ``ids`` and per pinned item: (until, pinnable, boost matches...), in one round trip."""
    boosts, params = boost_columns(rules)
    params["rule_ids"] = ids + [p.item for p in rules.pins]
    pinnable = "false"
    if rules.pins:
        conditions, condition_params = item_conditions(rules)
        pinnable = _PINNABLE.format(
            category="AND i.categories @> ARRAY[%(rule_category)s]::varchar[]" if category else "",
            conditions=conditions,
            unseen=_UNSEEN if seen_by is not None else "",
        )
        params.update(condition_params, rule_pins=[p.item for p in rules.pins], rule_category=category)
        params.update(rule_seen_by=seen_by)
        params.update(rule_exclude=excluded[0], rule_exclude_ids=excluded[1])
    with cursor() as cur:  # a prepared statement, like the vector searches
        cur.execute(_CHECK.format(pinnable=pinnable, boosts=boosts), params)
        return {row[0]: row[1:] for row in cur.fetchall()}


def _boosted(
    items: list[Recommendation], rows: dict[str, tuple[Any, ...]], factors: list[float]
) -> list[Recommendation]:
    if not factors:
        return [Recommendation(i.id, i.score, i.reason, i.until) for i in items]
    boosted = []
    for item in items:
        matches = item.boosts if item.boosts is not None else rows.get(item.id, (None, False))[2:]
        factor = 1.0
        for matched, f in zip(matches, factors, strict=False):
            if matched:
                factor *= f
        score = item.score * factor if item.score >= 0 else item.score / factor
        boosted.append(Recommendation(item.id, round(score, 6), item.reason, item.until))
    boosted.sort(key=lambda i: -i.score)  # stable: equal scores keep their order
    return boosted


def _pinned(
    items: list[Recommendation], rules: RuleSet, rows: dict[str, tuple[Any, ...]], limit: int
) -> list[Recommendation]:
    pins = sorted((p for p in rules.pins if p.item in rows and rows[p.item][1]), key=lambda p: p.position)
    if not pins:
        return items[:limit]
    pinned_ids = {p.item for p in pins}
    own = {i.id: i for i in items}
    ranked = [i for i in items if i.id not in pinned_ids]
    for pin in pins:
        at = min(pin.position - 1, len(ranked))
        if at >= limit:
            continue
        displaced = ranked[at].score if at < len(ranked) else (ranked[-1].score if ranked else 0.0)
        existing = own.get(pin.item)
        until = rows[pin.item][0]
        ranked.insert(
            at,
            Recommendation(
                pin.item,
                existing.score if existing else displaced,
                existing.reason if existing else None,
                None if until is None else float(until),
            ),
        )
    return ranked[:limit]
