"""Query-string parsing shared by the views; bad values raise ValidationFailed (400).

Each parser accepts exactly what its OpenAPI parameter declares (schemathesis checks both ways):
a typed parameter that is present must hold a value of its type, empty included.
"""

from __future__ import annotations

import re
from typing import Any, overload

from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request

from recsys.errors import ValidationFailed
from recsys.ids import EXTERNAL_ID_PATTERN, ID_CHAR, ID_CHARS, clean_external_id
from recsys.rules.expressions import MAX_CHARS
from recsys.rules.ruleset import MAX_BOOSTS, MAX_FACTOR, MIN_FACTOR, RuleSet, request_rules_parse
from recsys.rules.scenarios import SCENARIO_NAME_PATTERN, scenario_name_check

MAX_LIMIT = 200
MAX_CATEGORY_CHARS = 128
MAX_QUERY_IDS = 200
# A comma-separated list of ids, as ``query_ids`` accepts it.
ID_LIST_PATTERN = rf"^(?:{ID_CHARS}(?:,{ID_CHARS}){{0,{MAX_QUERY_IDS - 1}}})?$"
_ID_LIST_RE = re.compile(ID_LIST_PATTERN)
_INTEGER_RE = re.compile(r"-?[0-9]+")
_NUMBER_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def integer_parameter(
    name: str, *, minimum: int, maximum: int, default: int, description: str = ""
) -> OpenApiParameter:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    return OpenApiParameter(name, schema, description=description or f"{minimum}-{maximum}, default {default}")


def number_parameter(
    name: str, *, minimum: float, maximum: float, default: float, description: str
) -> OpenApiParameter:
    schema: dict[str, Any] = {"type": "number", "minimum": minimum, "maximum": maximum, "default": default}
    return OpenApiParameter(name, schema, description=description)


def boolean_parameter(name: str, description: str = "") -> OpenApiParameter:
    return OpenApiParameter(name, {"type": "boolean", "default": False}, description=description)


LIMIT_PARAMETER = integer_parameter("limit", minimum=1, maximum=MAX_LIMIT, default=10)
CATEGORY_PARAMETER = OpenApiParameter(
    "category", {"type": "string", "maxLength": MAX_CATEGORY_CHARS}, description="only items in this category"
)
EXCLUDE_PARAMETER = OpenApiParameter(
    "exclude",
    {"type": "string", "pattern": ID_LIST_PATTERN},
    description=f"comma-separated item ids (at most {MAX_QUERY_IDS}) never to recommend",
)


@overload
def query_one(request: Request, name: str, default: str) -> str: ...
@overload
def query_one(request: Request, name: str, default: None = None) -> str | None: ...
def query_one(request: Request, name: str, default: str | None = None) -> str | None:
    """A parameter that takes one value. Given twice (``?filter=a&filter=b``) it is refused: keeping
    either one would answer without a rule or exclusion its sender meant."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ValidationFailed(f"{name} may be given once", details={name: ["given more than once"]})
    return values[0] if values else default


def query_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = query_one(request, name)
    if raw is None:
        return default
    if not _INTEGER_RE.fullmatch(raw):
        raise ValidationFailed(f"{name} must be an integer", details={name: ["not an integer"]})
    # (a longer one is out of every range here, and past 4,300 digits int() refuses it)
    value = int(raw) if len(raw.lstrip("-").lstrip("0")) <= 18 else None
    if value is None or not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", details={name: ["out of range"]})
    return value


def query_limit(request: Request, default: int = 10) -> int:
    return query_int(request, "limit", default=default, minimum=1, maximum=MAX_LIMIT)


def query_bool(request: Request, name: str, *, default: bool = False) -> bool:
    raw = query_one(request, name)
    if raw is None:
        return default
    if raw.lower() == "true":
        return True
    if raw.lower() == "false":
        return False
    raise ValidationFailed(f"{name} must be true or false", details={name: ["not a boolean"]})


def query_float(request: Request, name: str, *, default: float, minimum: float, maximum: float) -> float:
    raw = query_one(request, name)
    if raw is None:
        return default
    if not _NUMBER_RE.fullmatch(raw):
        raise ValidationFailed(f"{name} must be a number", details={name: ["not a number"]})
    value = float(raw)
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", details={name: ["out of range"]})
    return value


def query_ids(request: Request, name: str) -> tuple[str, ...]:
    """A comma-separated list of client ids (at most MAX_QUERY_IDS); an empty value is no ids.

    Ids of the right shape are enough here: excluding an id that no item can have is harmless.
    """
    raw = query_one(request, name) or ""
    if not _ID_LIST_RE.fullmatch(raw):
        raise ValidationFailed(
            f"{name} must be at most {MAX_QUERY_IDS} comma-separated ids of {ID_CHAR}",
            details={name: ["invalid id list"]},
        )
    return tuple(raw.split(",")) if raw else ()


def query_category(request: Request) -> str | None:
    category = query_one(request, "category") or ""
    if len(category) > MAX_CATEGORY_CHARS:
        raise ValidationFailed("category is at most 128 characters", details={"category": ["too long"]})
    return category.strip().replace("\x00", "") or None


# ---- business rules (recsys.rules; the grammar is in the README) -------------------------------------

FILTER_PARAMETER = OpenApiParameter(
    "filter",
    {"type": "string", "maxLength": MAX_CHARS},
    description='only items matching this expression, e.g. attributes.in_stock = true AND categories CONTAINS "sale" '
    "(grammar in the README; 400 with the position of a fault)",
)
BOOST_PARAMETER = OpenApiParameter(
    "boost",
    {"type": "array", "items": {"type": "string", "maxLength": MAX_CHARS + 20}, "maxItems": MAX_BOOSTS},
    explode=True,
    description=f'<expression>:<factor> (factor {MIN_FACTOR}-{MAX_FACTOR}), e.g. categories CONTAINS "sale":2; '
    f"repeat for up to {MAX_BOOSTS}: the scores of matching items are multiplied (divided when negative)",
)
SCENARIO_PARAMETER = OpenApiParameter(
    "scenario",
    {"type": "string", "pattern": SCENARIO_NAME_PATTERN},
    description="apply this saved scenario's rules too (PUT /api/v1/scenarios/{name}); a name without saved "
    "rules applies none",
)
USER_PARAMETER = OpenApiParameter(
    "user", {"type": "string", "pattern": EXTERNAL_ID_PATTERN}, description="never recommend this user's hidden items"
)
RULE_PARAMETERS = [FILTER_PARAMETER, BOOST_PARAMETER, SCENARIO_PARAMETER]


def query_body_fields_refuse(request: Request, fields: Any) -> None:
    """A body field sent as a query parameter (``POST /recommendations?filter=...``) is refused, not
    silently ignored: the request would be answered without the rule its sender meant."""
    misplaced = sorted(set(request.query_params) & set(fields))
    if misplaced:
        raise ValidationFailed(
            f"{', '.join(misplaced)}: a field of the JSON body, not a query parameter",
            details={name: ["send it in the JSON body"] for name in misplaced},
        )


def query_rules(request: Request, *, with_user: bool = False) -> RuleSet:
    """The request's own ``filter=``, ``boost=`` (repeated) and, where asked, ``user=`` (hidden items)."""
    user = query_one(request, "user") if with_user else None
    if user is not None:
        clean_external_id(user, "user")
    return request_rules_parse(
        filter_text=query_one(request, "filter") or None,
        boosts=request.query_params.getlist("boost"),
        hidden_for=user,
    )


RULE_FIELDS = ("filter", "boost", "scenario", "user")


def body_or_query_rules(request: Request, body: dict[str, Any]) -> tuple[RuleSet, str | None]:
    """A POST's business rules and scenario (``RULE_FIELDS``) from its validated JSON ``body`` or,
    as on every GET endpoint, its query string; one field given in both is refused (which was meant?)."""
    both = sorted(name for name in RULE_FIELDS if name in body and name in request.query_params)
    if both:
        raise ValidationFailed(
            f"{', '.join(both)}: given both in the JSON body and as a query parameter",
            details={name: ["given both in the JSON body and as a query parameter"] for name in both},
        )
    user = body.get("user", query_one(request, "user"))
    if user is not None:
        clean_external_id(user, "user")
    scenario = body.get("scenario", query_one(request, "scenario"))
    rules = request_rules_parse(
        filter_text=body.get("filter", query_one(request, "filter")) or None,
        boosts=body.get("boost", request.query_params.getlist("boost")),
        hidden_for=user,
    )
    return rules, scenario_name_check(scenario) if scenario is not None else None


def query_scenario(request: Request) -> str | None:
    name = query_one(request, "scenario")
    return scenario_name_check(name) if name is not None else None
