"""Saved scenarios (validated at save, cached per process for serving) and users' hidden items."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from recsys.errors import NotFound, UserNotFound, ValidationFailed
from recsys.ids import is_external_id
from recsys.models import HiddenItem, Item, Scenario, User
from recsys.rules.ruleset import MAX_BOOSTS, NO_RULES, Pin, RuleSet, expression_check, factor_check
from recsys.rules.ruleset import Boost as BoostRule
from recsys.selectors import user_get
from recsys.signals import user_rules_changed

SCENARIO_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SCENARIO_NAME_RE = re.compile(SCENARIO_NAME_PATTERN)
MAX_PINS = 20
MAX_BURIES = 200
MAX_POSITION = 200
MAX_HIDDEN_PER_REQUEST = 1000


def scenario_name_check(name: str) -> str:
    if not SCENARIO_NAME_RE.fullmatch(name):
        raise ValidationFailed(
            "a scenario name is 1-64 of [a-z0-9_-], starting with a letter or digit",
            details={"scenario": ["invalid name"]},
        )
    return name


# ---- saving -------------------------------------------------------------------------------------


def scenario_put(*, name: str, body: Any) -> tuple[Scenario, bool]:
    """Create or replace a scenario from the API's body; every expression is checked first."""
    scenario_name_check(name)
    fields = scenario_fields_clean(body)
    with transaction.atomic():
        scenario, created = Scenario.objects.update_or_create(name=name, defaults=fields)
    scenario_cache_forget()
    return scenario, created


def scenario_fields_clean(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) - {"filter", "boost", "pins", "buries"}:
        raise ValidationFailed(
            'send {"filter": str?, "boost": [{"expression": str, "factor": number}]?, '
            '"pins": [{"item": id, "position": int}]?, "buries": [id]?}',
            details={"body": ["invalid"]},
        )
    # Absent means empty; a present field must have its type (``or`` would let {} or false pass as empty).
    filter_text = body.get("filter", "")
    if not isinstance(filter_text, str):
        raise ValidationFailed("filter must be a string", details={"filter": ["not a string"]})
    if filter_text:
        expression_check(filter_text, name="filter")
    return {
        "filter": filter_text,
        "boosts": _boosts(body.get("boost", [])),
        "pins": _pins(body.get("pins", [])),
        "buries": _buries(body.get("buries", [])),
    }


def _list(value: Any, name: str, most: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > most:
        raise ValidationFailed(f"{name} must be a list of at most {most}", details={name: ["invalid"]})
    return value


def _boosts(value: Any) -> list[dict[str, Any]]:
    boosts = []
    for entry in _list(value, "boost", MAX_BOOSTS):
        if not (isinstance(entry, dict) and set(entry) == {"expression", "factor"}) or not isinstance(
            entry["expression"], str
        ):
            raise ValidationFailed(
                'each boost is {"expression": str, "factor": number}', details={"boost": ["invalid"]}
            )
        expression = expression_check(entry["expression"], name="boost")
        boosts.append({"expression": expression, "factor": factor_check(entry["factor"], name="boost")})
    return boosts


def _pins(value: Any) -> list[dict[str, Any]]:
    pins, seen_items, seen_positions = [], set(), set()
    for entry in _list(value, "pins", MAX_PINS):
        ok = isinstance(entry, dict) and set(entry) == {"item", "position"}
        item, position = (entry.get("item"), entry.get("position")) if ok else (None, None)
        if not (
            is_external_id(item)
            and isinstance(position, int)
            and not isinstance(position, bool)
            and 1 <= position <= MAX_POSITION
        ):
            raise ValidationFailed(
                f'each pin is {{"item": id, "position": 1-{MAX_POSITION}}}', details={"pins": ["invalid"]}
            )
        if item in seen_items or position in seen_positions:
            raise ValidationFailed("two pins name the same item or position", details={"pins": ["duplicate"]})
        seen_items.add(item)
        seen_positions.add(position)
        pins.append({"item": item, "position": position})
    return pins


def _buries(value: Any) -> list[str]:
    buries = _list(value, "buries", MAX_BURIES)
    if not all(is_external_id(b) for b in buries):
        raise ValidationFailed("buries is a list of item ids", details={"buries": ["invalid"]})
    return list(dict.fromkeys(buries))


def scenario_delete(*, name: str) -> None:
    if not SCENARIO_NAME_RE.fullmatch(name):  # (one that cannot be saved: NUL would reach PostgreSQL)
        raise NotFound(f"scenario {name!r} does not exist")
    deleted, _ = Scenario.objects.filter(name=name).delete()
    scenario_cache_forget()
    if not deleted:
        raise NotFound(f"scenario {name!r} does not exist")


def scenario_get(*, name: str) -> Scenario:
    scenario = Scenario.objects.filter(name=name).first() if SCENARIO_NAME_RE.fullmatch(name) else None
    if scenario is None:
        raise NotFound(f"scenario {name!r} does not exist")
    return scenario


def scenarios_list() -> list[Scenario]:
    return list(Scenario.objects.order_by("name"))


def scenario_rules(scenario: Scenario) -> RuleSet:
    return RuleSet(
        filters=(scenario.filter,) if scenario.filter else (),
        boosts=tuple(BoostRule(b["expression"], float(b["factor"])) for b in scenario.boosts),
        pins=tuple(Pin(p["item"], int(p["position"])) for p in scenario.pins),
        buries=tuple(scenario.buries),
        version=f"{scenario.name}@{scenario.updated_at.isoformat()}",
    )


# ---- serving: per-process cache -----------------------------------------------------------------

_lock = threading.Lock()
_cached: dict[str, tuple[float, RuleSet]] = {}
MAX_CACHED_SCENARIOS = 1_000


def scenario_rules_serving(*, name: str) -> RuleSet:
    """A scenario's rules for serving, re-read at most every RECSYS_SCENARIO_CACHE_SECONDS (saves in
    this process are seen at once; other processes see them within that time). An unknown scenario
    has no rules: a scenario may name only an experiment's scope."""
    now = time.monotonic()
    with _lock:
        cached = _cached.get(name)
    if cached is not None and now - cached[0] < settings.RECSYS_SCENARIO_CACHE_SECONDS:
        return cached[1]
    scenario = Scenario.objects.filter(name=name).first()
    rules = scenario_rules(scenario) if scenario else NO_RULES
    with _lock:
        if len(_cached) >= MAX_CACHED_SCENARIOS:  # names nobody saved would otherwise grow it without end
            _cached.clear()
        _cached[name] = (now, rules)
    return rules


def scenario_cache_forget() -> None:
    with _lock:
        _cached.clear()


# ---- hidden items -------------------------------------------------------------------------------

_HIDE = """
    INSERT INTO recsys_hiddenitem (user_id, item_id, created_at)
    SELECT u.id, i.id, now() FROM recsys_user u JOIN recsys_item i ON i.external_id = ANY(%(items)s)
    WHERE u.external_id = %(user)s
    ON CONFLICT (user_id, item_id) DO NOTHING
"""
_UNHIDE = """
    DELETE FROM recsys_hiddenitem h USING recsys_user u, recsys_item i
    WHERE u.external_id = %(user)s AND h.user_id = u.id AND i.external_id = ANY(%(items)s) AND h.item_id = i.id
"""


def hidden_items_check(body: Any) -> list[str]:
    items = body.get("items") if isinstance(body, dict) and set(body) == {"items"} else None
    if (
        not isinstance(items, list)
        or not items
        or len(items) > MAX_HIDDEN_PER_REQUEST
        or not all(is_external_id(i) for i in items)
    ):
        raise ValidationFailed(
            f'send {{"items": [id, ...]}} with 1 to {MAX_HIDDEN_PER_REQUEST} item ids', details={"items": ["invalid"]}
        )
    return list(dict.fromkeys(items))


def hidden_items_add(*, user_external_id: str, items: list[str]) -> dict[str, Any]:
    """Hide these items from the user; ids of items that do not exist are reported, not stored."""
    return _hidden_change(_HIDE, user_external_id, items)


def hidden_items_remove(*, user_external_id: str, items: list[str]) -> dict[str, Any]:
    return _hidden_change(_UNHIDE, user_external_id, items)


def _hidden_change(statement: str, user_external_id: str, items: list[str]) -> dict[str, Any]:
    # 404 for an unknown user, asked of the primary: a user created moments ago by an impression or
    # an import is not on a lagging replica yet (user_get reads one), and the hide would be lost.
    if not User.objects.filter(external_id=user_external_id).exists():
        raise UserNotFound(f"user {user_external_id!r} does not exist")
    known = set(Item.objects.filter(external_id__in=items).values_list("external_id", flat=True))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, {"user": user_external_id, "items": items})
        changed = cursor.rowcount
    user_rules_changed.send(sender=Scenario, external_id=user_external_id)
    return {"changed": changed, "unknown_items": [i for i in items if i not in known]}


def hidden_items_list(*, user_external_id: str) -> list[str]:
    user = user_get(external_id=user_external_id)
    rows = HiddenItem.objects.filter(user=user).order_by("-created_at", "-id")
    return list(rows.values_list("item__external_id", flat=True))
