"""The client's network address, one rule for the API's failed-key limit and the admin login lockout."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def client_address(request: Any) -> str:
    """REMOTE_ADDR; behind RECSYS_TRUSTED_PROXIES proxies, the X-Forwarded-For entry that the
    outermost trusted proxy appended (entries left of it are the client's to forge)."""
    proxies = settings.RECSYS_TRUSTED_PROXIES
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    if proxies and hops:
        return hops[-min(proxies, len(hops))]
    return str(request.META.get("REMOTE_ADDR", ""))
