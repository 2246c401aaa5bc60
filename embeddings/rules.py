"""Business rules at serving time: a request's rules merged with its scenario's, and boosts, pins and
buries applied to a widened answer (filters and hidden items are already inside the queries)."""

from __future__ import annotations

from typing import Any

from django.db import connection

from embeddings.serving import Answer, Recommendation
from recsys.rules.ruleset import NO_RULES, RuleSet, item_conditions
from recsys.rules.scenarios import scenario_rules_serving

__all__ = ["NO_RULES", "RuleSet", "answer_rules_apply", "rules_resolve"]


def rules_resolve(*, rules: RuleSet, scenario: str | None, apply_scenario_rules: bool) -> RuleSet:
    """The request's own rules and, unless switched off (an experiment's variant may), its
    scenario's saved ones: both filters must hold and boosts multiply."""
    if not scenario or not apply_scenario_rules:
        return rules
    return rules.merged(scenario_rules_serving(name=scenario))


_CHECK = """
    SELECT i.external_id, extract(epoch FROM i.available_until), {pinnable} {boosts}
    FROM recsys_item i WHERE i.external_id = ANY(%(rule_ids)s)
"""
_PINNABLE = """(i.external_id = ANY(%(rule_pins)s) AND NOT i.is_hidden
    AND i.external_id <> ALL(%(rule_exclude)s::text[]) AND i.id <> ALL(%(rule_exclude_ids)s::int8[])
    {category} {conditions})"""


def answer_rules_apply(
    answer: Answer,
    rules: RuleSet,
    *,
    limit: int,
    category: str | None = None,
    exclude: tuple[str, ...] = (),
    exclude_ids: tuple[int, ...] = (),
) -> Answer:
    """Boosts multiply the scores of matching candidates (a positive score is multiplied, a
        negative one divided, so a factor above 1 always lifts), buried items go after all others,
        pinned items take their positions when they pass the filters and are not excluded (``exclude``:
    client ids, ``exclude_ids``: database ids), and the answer is cut to ``limit``."""
    if not rules.reorders or (not answer.items and not rules.pins):
        answer.items = answer.items[:limit]
        return answer
    rows = _checked(answer.items, rules, (list(exclude), list(exclude_ids)), category)
    items = _boosted(answer.items, rows, [factor for _, factor in rules.boost_conditions()])
    buried = set(rules.buries)
    items = [i for i in items if i.id not in buried] + [i for i in items if i.id in buried]
    answer.items = _pinned(items, rules, rows, limit)
    return answer


def _checked(
    items: list[Recommendation], rules: RuleSet, excluded: tuple[list[str], list[int]], category: str | None
) -> dict[str, tuple[Any, ...]]:
    """Per candidate and pinned item: (until, pinnable, boost matches...), in one round trip."""
    boosts = rules.boost_conditions()
    params: dict[str, Any] = {"rule_ids": [i.id for i in items] + [p.item for p in rules.pins]}
    boost_sql = "".join(f", {compiled.sql}" for compiled, _ in boosts)
    for compiled, _ in boosts:
        params.update(compiled.params)
    pinnable = "false"
    if rules.pins:
        conditions, condition_params = item_conditions(rules)
        pinnable = _PINNABLE.format(
            category="AND i.categories @> ARRAY[%(rule_category)s]::varchar[]" if category else "",
            conditions=conditions,
        )
        params.update(condition_params, rule_pins=[p.item for p in rules.pins])
        params.update(rule_exclude=excluded[0], rule_exclude_ids=excluded[1])
        params["rule_category"] = category
    with connection.cursor() as cursor:
        cursor.execute(_CHECK.format(pinnable=pinnable, boosts=boost_sql), params)
        return {row[0]: row[1:] for row in cursor.fetchall()}


def _boosted(
    items: list[Recommendation], rows: dict[str, tuple[Any, ...]], factors: list[float]
) -> list[Recommendation]:
    if not factors:
        return list(items)
    boosted = []
    for item in items:
        factor = 1.0
        for matches, f in zip(rows.get(item.id, (None, False))[2:], factors, strict=False):
            factor *= f if matches else 1.0
        score = item.score * factor if item.score >= 0 else item.score / factor
        boosted.append(Recommendation(item.id, round(score, 6), item.reason, item.until))
    return sorted(boosted, key=lambda i: -i.score)  # stable: equal scores keep their order


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
