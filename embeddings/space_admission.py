"""Who may create a custom vector space, and how many may exist (each is a table and an HNSW index)."""

from __future__ import annotations

import re

from django.conf import settings
from django.db import connection

from embeddings.models import VectorSpace
from recsys.errors import Conflict, PermissionDenied
from recsys.validation import CUSTOM_SPACE_PATTERN

_CREATION_LOCK = "recsys:space:create"


def custom_space_admit(*, space: str, may_create: bool) -> None:
    """Lets a vector into ``space``: an existing space always; a new one only when ``may_create``
    (the caller's key holds ``admin``) and fewer than RECSYS_MAX_CUSTOM_SPACES exist.

    Call it inside the transaction that stores the vector: a creation holds a lock to its end, so
    concurrent creations of different spaces cannot pass the cap together.
    """
    if not re.fullmatch(CUSTOM_SPACE_PATTERN, space) or _exists(space):
        return  # an existing space, or a name the vector service refuses with its own 400
    if not may_create:
        raise PermissionDenied(
            f"space {space!r} does not exist, and creating a space needs the 'admin' scope",
            details={"space": ["creating a space needs the 'admin' scope"]},
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [_CREATION_LOCK])
    limit = settings.RECSYS_MAX_CUSTOM_SPACES
    if not _exists(space) and VectorSpace.objects.count() >= limit:
        raise Conflict(
            f"there are already {limit} custom spaces (RECSYS_MAX_CUSTOM_SPACES); reuse one or delete one",
            details={"max_custom_spaces": limit},
        )


def _exists(space: str) -> bool:
    return VectorSpace.objects.filter(name=space).exists()
