"""Validation of client payloads: plain functions, fast enough for 10,000-row batches.

Each ``clean_*`` returns normalised values or raises ``ValidationFailed`` whose ``details`` map
field names to messages. Unknown fields are rejected (a typo should not be silently dropped).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from recsys.errors import PayloadTooLarge, ValidationFailed

# The id rule lives in recsys.ids; these names stay importable from here for the ingestion code.
from recsys.ids import EXTERNAL_ID_PATTERN, clean_external_id, is_external_id  # noqa: F401

MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 100_000
MAX_CATEGORIES = 100
MAX_CATEGORY_CHARS = 128
MAX_ATTRIBUTES_BYTES = 64 * 1024

ITEM_FIELDS = frozenset(
    {"title", "text", "categories", "attributes", "is_hidden", "published_at", "available_from", "available_until"}
)
USER_FIELDS = frozenset({"attributes"})


# Vector spaces: the built-in ones, and the names a custom space may take (they become part of its
# table's name). One rule for the validators, the query parameters and the OpenAPI schema.
BUILT_IN_SPACES = ("collaborative", "content", "hybrid")
SPACE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
SPACE_PATTERN = f"^{SPACE_NAME_RE.pattern}$"  # any space, built-in or custom
CUSTOM_SPACE_PATTERN = f"^(?!(?:{'|'.join(BUILT_IN_SPACES)})$){SPACE_NAME_RE.pattern}$"


def parse_timestamp(value: object, field: str = "timestamp") -> datetime:
    """An ISO 8601 string with a zone (``Z`` or ``+02:00``) → an aware UTC datetime.

    Any date: the bounds of an event's time are an ingestion rule (``recsys.ingestion.rules``).
    """
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be an ISO 8601 string", details={field: ["not a string"]})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailed(
            f"{field} is not an ISO 8601 timestamp: {value[:40]!r}", details={field: ["invalid timestamp"]}
        ) from None
    if moment.tzinfo is None:
        raise ValidationFailed(
            f"{field} needs a time zone (e.g. 'Z' or '+00:00')", details={field: ["missing time zone"]}
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise ValidationFailed(f"{field} is out of range", details={field: ["out of range"]}) from None


def _require_object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationFailed(f"{what} must be a JSON object", details={"non_field_errors": ["not an object"]})
    return data


def _reject_unknown(data: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)}",
            details={name: ["unknown field"] for name in unknown},
        )


def _clean_string(data: dict[str, Any], field: str, limit: int) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be a string", details={field: ["not a string"]})
    if len(value) > limit:
        raise ValidationFailed(f"{field} is longer than {limit} characters", details={field: ["too long"]})
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL


def _clean_categories(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValidationFailed(
            "categories must be a list of strings", details={"categories": ["not a list of strings"]}
        )
    if len(value) > MAX_CATEGORIES:
        raise ValidationFailed(f"at most {MAX_CATEGORIES} categories", details={"categories": ["too many"]})
    if any(len(c) > MAX_CATEGORY_CHARS or "\x00" in c for c in value):
        raise ValidationFailed(
            f"a category is at most {MAX_CATEGORY_CHARS} characters, without NUL", details={"categories": ["too long"]}
        )
    return list(dict.fromkeys(c.strip() for c in value if c.strip()))


def clean_attributes(value: object) -> dict[str, Any]:
    """A JSON object of at most 64 KB; NUL characters (which jsonb cannot hold) are dropped, as in text.

    Numbers must be finite: Python's JSON reads ``1e999`` as infinity, which jsonb cannot hold.
    """
    if not isinstance(value, dict):
        raise ValidationFailed("attributes must be a JSON object", details={"attributes": ["not an object"]})
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValidationFailed(
            "attributes may hold only finite numbers (not 1e999, Infinity or NaN)",
            details={"attributes": ["not a finite number"]},
        ) from None
    if len(encoded.encode()) > MAX_ATTRIBUTES_BYTES:
        raise ValidationFailed(
            f"attributes must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON", details={"attributes": ["too large"]}
        )
    return _without_nul(value) if "\\u0000" in json.dumps(value) else value


def _without_nul(value: Any) -> Any:
    """NUL dropped from string values; a name holding NUL is refused (dropped, "price\\u0000" would
    overwrite "price")."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        if any("\x00" in k for k in value):
            raise ValidationFailed("attribute names cannot hold NUL", details={"attributes": ["a name holds NUL"]})
        return {k: _without_nul(v) for k, v in value.items()}
    return value


def _clean_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationFailed(f"{field} must be true or false", details={field: ["not a boolean"]})
    return value


def clean_item_fields(data: object) -> dict[str, Any]:
    """The fields present in an item upsert body, validated; absent fields are left out."""
    body = _require_object(data, "item")
    _reject_unknown(body, ITEM_FIELDS)
    cleaned: dict[str, Any] = {}
    if "title" in body:
        cleaned["title"] = _clean_string(body, "title", MAX_TITLE_CHARS)
    if "text" in body:
        cleaned["text"] = _clean_string(body, "text", MAX_TEXT_CHARS)
    if "categories" in body:
        cleaned["categories"] = _clean_categories(body["categories"])
    if "attributes" in body:
        cleaned["attributes"] = clean_attributes(body["attributes"])
    if "is_hidden" in body:
        cleaned["is_hidden"] = _clean_bool(body["is_hidden"], "is_hidden")
    if "published_at" in body:
        published = body["published_at"]
        cleaned["published_at"] = None if published is None else parse_timestamp(published, "published_at")
    for field in ("available_from", "available_until"):  # the window outside which it is never recommended
        if field in body:
            cleaned[field] = None if body[field] is None else parse_timestamp(body[field], field)
    if window_empty(cleaned.get("available_from"), cleaned.get("available_until")):
        raise window_error()
    return cleaned


def window_empty(start: datetime | None, end: datetime | None) -> bool:
    """Whether an availability window with these ends (None: open) holds no moment."""
    return start is not None and end is not None and start >= end


def window_error() -> ValidationFailed:
    return ValidationFailed(
        "available_until must be after available_from", details={"available_until": ["before available_from"]}
    )


def clean_user_fields(data: object) -> dict[str, Any]:
    body = _require_object(data, "user")
    _reject_unknown(body, USER_FIELDS)
    return {"attributes": clean_attributes(body["attributes"])} if "attributes" in body else {}


def clean_batch(data: object, key: str, *, max_rows: int) -> list[Any]:
    """The list under ``key`` of a batch body; raises PayloadTooLarge past ``max_rows``."""
    body = _require_object(data, "body")
    _reject_unknown(body, frozenset({key}))
    rows = body.get(key)
    if not isinstance(rows, list):
        raise ValidationFailed(f"{key} must be a list", details={key: ["required list"]})
    if len(rows) > max_rows:
        raise PayloadTooLarge(
            f"at most {max_rows} {key} per request, got {len(rows)}",
            details={"max_rows": max_rows, "rows": len(rows)},
        )
    return rows
