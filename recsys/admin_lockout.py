"""The admin login's lockout answer: django-axes' own, with the Retry-After its cool-off implies."""

from __future__ import annotations

from typing import Any

from axes.helpers import get_cool_off, get_lockout_message
from django.http import HttpRequest, HttpResponse


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 with axes' message and ``Retry-After``: the cool-off (RECSYS_LOGIN_COOLOFF_MINUTES), counted
    from the last failure, so waiting that long from now always suffices."""
    response = HttpResponse(get_lockout_message(), status=429)
    cool_off = get_cool_off(request)
    if cool_off:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response
