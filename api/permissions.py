"""Scope checks: every API view declares the scope each HTTP method needs."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from recsys.models import ApiKey

PUBLIC = "public"


def required_scope(view: Any, method: str) -> str | None:
    """The scope ``view`` declares for ``method`` (``PUBLIC`` for none), or None if undeclared."""
    scopes: dict[str, str] = getattr(view, "scopes", {})
    if method in ("HEAD", "OPTIONS") and "GET" in scopes:
        return scopes["GET"]
    return scopes.get(method)


class HasScope(permissions.BasePermission):
    """Allows a request when its key holds the scope the view declares for the method.

    A view that declares nothing for a method denies it: forgetting a scope cannot open an endpoint.
    """

    message = "this API key lacks the scope this endpoint needs"

    def has_permission(self, request: Request, view: Any) -> bool:
        method = request.method or ""
        if not hasattr(view, method.lower()):
            return True  # let the view answer 405 rather than a misleading 401/403
        scope = required_scope(view, method)
        if scope == PUBLIC:
            return True
        if scope is None or not isinstance(request.auth, ApiKey):
            return False
        if not request.auth.has_scope(scope):
            self.message = f"this API key lacks the '{scope}' scope"
            return False
        return True
