"""The client id rule, written once: its characters, length and reserved shapes, as a check and as
the regular expressions that the database, the serializers and the OpenAPI schema use."""

from __future__ import annotations

import re

from recsys.errors import ValidationFailed

ID_MAX_LENGTH = 128
ID_CHAR = "[A-Za-z0-9_.:@/-]"
ID_CHARS = rf"{ID_CHAR}{{1,{ID_MAX_LENGTH}}}"
# The database's check constraint holds the characters only, and the column (varchar(ID_MAX_LENGTH)) the
# length: the reserved shapes are about addressing ids in URLs, which the API and the importers refuse
# before anything is stored. `+` rather than `{1,128}`: PostgreSQL's regex engine counting to 128 cost
# 0.80 s of CPU per 100,000 new ids, `+` 0.09 s (BENCHMARKS.md, Ingestion).
STORED_ID_PATTERN = f"^{ID_CHAR}+$"

# Ids may contain "/", so an id shaped like an endpoint path could never be addressed by it, nor
# could one with a "." or ".." path segment (HTTP clients resolve those before sending).
RESERVED_IDS = frozenset({"batch", "popular"})
RESERVED_ID_RE = re.compile(
    r".*/(similar|duplicates|interactions|recommendations|hidden)|.*/vectors/.*|(?:.*/)?\.\.?(?:/.*)?"
)
# The whole rule as one regular expression, for the OpenAPI schema and serializers (ECMA-262 and
# Python agree on it; tests/recsys/test_validation_properties.py holds it equal to is_external_id).
EXTERNAL_ID_PATTERN = (
    r"^(?!(?:batch|popular)$)(?!.*/(?:similar|duplicates|interactions|recommendations|hidden)$)(?!.*/vectors/)"
    rf"(?!(?:.*/)?\.\.?(?:/|$)){ID_CHARS}$"
)
ID_RULE = f"1-{ID_MAX_LENGTH} characters of [A-Za-z0-9_.:@/-], not shaped like an endpoint path"

_ID_RE = re.compile(ID_CHARS)


def is_external_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and _ID_RE.fullmatch(value) is not None
        and value not in RESERVED_IDS
        and RESERVED_ID_RE.fullmatch(value) is None
    )


def external_id_validate(value: object) -> None:
    """The id rule as a Django field validator (the admin's forms): the same rule as the API's."""
    from django.core.exceptions import ValidationError

    if not is_external_id(value):
        raise ValidationError(f"An id is {ID_RULE} (not batch, popular, nor ending in /similar, /hidden, ...).")


def clean_external_id(value: object, field: str = "id") -> str:
    if not is_external_id(value):
        raise ValidationFailed(f"{field} must be {ID_RULE}", details={field: ["invalid id"]})
    return value  # type: ignore[return-value]
