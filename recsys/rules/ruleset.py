"""The rules one request applies (its own and its scenario's), and the SQL conditions they put on items.

Every serving query that reads ``recsys_item i`` adds ``item_conditions``: the availability window
always, and the rules' filter and the user's hidden items when there are any, so filtered and
hidden items are skipped inside the query (and the answer still has ``limit`` items when enough match).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from recsys.errors import ValidationFailed
from recsys.rules.expressions import Compiled, ExpressionError, expression_compile

MAX_BOOSTS = 8
MIN_FACTOR, MAX_FACTOR = 0.01, 100.0
# Boosts and buries re-sort the best 3 × limit candidates (at most MAX_BOOST_DEPTH): a boost lifts
# items from that deep. Deeper costs more on pgvector < 0.8, whose index returns at most ef_search
# candidates per pass (bench/rules.py).
BOOST_DEPTH_FACTOR = 3
MAX_BOOST_DEPTH = 600

AVAILABLE = (
    "(i.available_from IS NULL OR i.available_from <= statement_timestamp())"
    " AND (i.available_until IS NULL OR i.available_until > statement_timestamp())"
)
_HIDDEN = (
    "i.id NOT IN (SELECT h.item_id FROM recsys_hiddenitem h JOIN recsys_user hu ON hu.id = h.user_id"
    " WHERE hu.external_id = %(rule_hidden_for)s)"
)


@dataclass(frozen=True)
class Boost:
    expression: str
    factor: float


@dataclass(frozen=True)
class Pin:
    item: str
    position: int  # 1-based


@dataclass(frozen=True)
class RuleSet:
    """Filters (all must hold), boosts (factors multiply), pins and buries (a scenario's), and the
    user whose hidden items are skipped."""

    filters: tuple[str, ...] = ()
    boosts: tuple[Boost, ...] = ()
    pins: tuple[Pin, ...] = ()
    buries: tuple[str, ...] = ()
    hidden_for: str | None = None
    version: str = field(default="", compare=False)  # the scenario's updated_at: cached answers follow saves

    @property
    def empty(self) -> bool:
        return not (self.filters or self.boosts or self.pins or self.buries or self.hidden_for)

    @property
    def reorders(self) -> bool:
        return bool(self.boosts or self.pins or self.buries)

    def key(self) -> str:
        """What the answer cache's variant needs to tell rule sets apart."""
        if self.empty:
            return ""
        return json.dumps(
            [
                self.filters,
                [[b.expression, b.factor] for b in self.boosts],
                [[p.item, p.position] for p in self.pins],
                self.buries,
                self.hidden_for,
                self.version,
            ]
        )

    def depth(self, limit: int) -> int:
        """How many candidates to fetch for ``limit`` items: boosts and buries re-sort a wider list,
        pins displace items."""
        wanted = limit + len(self.pins)
        if self.boosts or self.buries:
            wanted = max(wanted, min(BOOST_DEPTH_FACTOR * limit, MAX_BOOST_DEPTH))
        return wanted

    def merged(self, other: RuleSet) -> RuleSet:
        return RuleSet(
            filters=self.filters + other.filters,
            boosts=self.boosts + other.boosts,
            pins=self.pins + other.pins,
            buries=self.buries + other.buries,
            hidden_for=self.hidden_for or other.hidden_for,
            version=self.version + other.version,
        )


NO_RULES = RuleSet()


@lru_cache(maxsize=512)
def filter_compile(text: str, *, prefix: str) -> Compiled:
    """A compiled expression (cached: the same scenario's rules are compiled once per process)."""
    return expression_compile(text, prefix=prefix)


@lru_cache(maxsize=512)
def filters_compile(filters: tuple[str, ...]) -> Compiled:
    """The filters as one condition (cached per process like their expressions: a request that
    repeats a filter, or a scenario's, costs no compiling)."""
    compiled = [filter_compile(text, prefix=f"rule_f{n}_") for n, text in enumerate(filters)]
    params: dict[str, Any] = {}
    for c in compiled:
        params.update(c.params)
    return Compiled(" AND ".join(c.sql for c in compiled), params)


@lru_cache(maxsize=512)
def _conditions(filters: tuple[str, ...], hidden: bool) -> Compiled:
    sql, params = f"AND {AVAILABLE}", {}
    if filters:
        where = filters_compile(filters)
        sql += f" AND {where.sql}"
        params.update(where.params)
    if hidden:
        sql += f" AND {_HIDDEN}"
    return Compiled(sql, params)


def item_conditions(rules: RuleSet) -> tuple[str, dict[str, Any]]:
    """``AND ...`` conditions on ``recsys_item i`` for a serving query, and their parameters."""
    conditions = _conditions(rules.filters, bool(rules.hidden_for))
    params = dict(conditions.params)  # a copy: callers add their own parameters to it
    if rules.hidden_for:
        params["rule_hidden_for"] = rules.hidden_for
    return conditions.sql, params


@lru_cache(maxsize=512)
def _boost_columns(expressions: tuple[str, ...]) -> Compiled:
    sql, params = "", {}
    for k, text in enumerate(expressions):
        compiled = filter_compile(text, prefix=f"rule_b{k}_")
        sql += f", {compiled.sql} AS boost_{k}"
        params.update(compiled.params)
    return Compiled(sql, params)


def boost_columns(rules: RuleSet) -> tuple[str, dict[str, Any]]:
    """``, <match> AS boost_<k>`` select columns, one per boost: whether a candidate matches it is
    read by the query that finds the candidate, so boosting costs no round trip of its own."""
    columns = _boost_columns(tuple(b.expression for b in rules.boosts))
    return columns.sql, dict(columns.params)


# ---- validation (the API's door and the scenario's save) -------------------------------------------


def expression_check(text: str, *, name: str) -> str:
    """``text`` when it is a valid expression; else ValidationFailed naming ``name`` and the position."""
    try:
        filter_compile(text, prefix="check_")
    except ExpressionError as error:
        raise ValidationFailed(
            f"{name}: {error.message} at position {error.position}",
            details={name: [f"{error.message} (at position {error.position})"], "position": error.position},
        ) from None
    return text


def factor_check(factor: Any, *, name: str) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not MIN_FACTOR <= factor <= MAX_FACTOR:
        raise ValidationFailed(
            f"{name}: a boost factor is a number from {MIN_FACTOR} to {MAX_FACTOR}",
            details={name: [f"factor must be a number from {MIN_FACTOR} to {MAX_FACTOR}"]},
        )
    return float(factor)


def boost_parse(text: str, *, name: str = "boost") -> Boost:
    """``<expression>:<factor>``, e.g. ``categories CONTAINS "sale":2``: the factor follows the last colon."""
    expression, colon, factor = text.rpartition(":")
    try:
        value = float(factor) if colon else None
    except ValueError:
        value = None
    if value is None or value != value:
        raise ValidationFailed(
            f'{name} must be <expression>:<factor>, e.g. categories CONTAINS "sale":2',
            details={name: ["expected <expression>:<factor>"]},
        )
    return Boost(expression_check(expression, name=name), factor_check(value, name=name))


def request_rules_parse(*, filter_text: str | None, boosts: list[str], hidden_for: str | None) -> RuleSet:
    """A request's own rules (``filter=``, ``boost=`` repeated, ``user=``), validated."""
    if len(boosts) > MAX_BOOSTS:
        raise ValidationFailed(f"at most {MAX_BOOSTS} boosts", details={"boost": [f"at most {MAX_BOOSTS}"]})
    filters = (expression_check(filter_text, name="filter"),) if filter_text else ()
    return RuleSet(filters=filters, boosts=tuple(boost_parse(b) for b in boosts), hidden_for=hidden_for)
