"""Query-string parsing shared by the views; bad values raise ValidationFailed (400)."""

from __future__ import annotations

from rest_framework.request import Request

from recsys.errors import ValidationFailed

MAX_LIMIT = 200


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
