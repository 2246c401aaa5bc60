"""Query-string parsing shared by the views; bad values raise ValidationFailed (400)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request

from recsys.errors import ValidationFailed

MAX_LIMIT = 200
LIMIT_PARAMETER = OpenApiParameter("limit", int, description=f"1-{MAX_LIMIT}, default 10")


def query_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer", details={name: ["not an integer"]}) from None
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", details={name: ["out of range"]})
    return value


def query_limit(request: Request, default: int = 10) -> int:
    return query_int(request, "limit", default=default, minimum=1, maximum=MAX_LIMIT)


def query_bool(request: Request, name: str, *, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise ValidationFailed(f"{name} must be true or false", details={name: ["not a boolean"]})


def query_float(request: Request, name: str, *, default: float, minimum: float, maximum: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be a number", details={name: ["not a number"]}) from None
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", details={name: ["out of range"]})
    return value


def query_ids(request: Request, name: str, *, maximum: int = 200) -> tuple[str, ...]:
    """A comma-separated list of client ids (at most ``maximum``)."""
    from recsys.validation import clean_external_id

    raw = request.query_params.get(name) or ""
    ids = tuple(part for part in (p.strip() for p in raw.split(",")) if part)
    if len(ids) > maximum:
        raise ValidationFailed(f"{name} takes at most {maximum} ids", details={name: ["too many"]})
    return tuple(clean_external_id(i, name) for i in ids)


def query_category(request: Request) -> str | None:
    category = (request.query_params.get("category") or "").strip()
    if len(category) > 128:
        raise ValidationFailed("category is at most 128 characters", details={"category": ["too long"]})
    return category or None
