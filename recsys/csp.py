"""Content-Security-Policy on the operator admin's pages (Django 5.2 has no CSP support of its own)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

# Scripts only from this site's static files: the admin's own, ECharts and admin_charts.js (the
# templates hold no inline script or event handler; json_script data blocks are not executed).
# Inline styles stay allowed: Django's admin widgets and ECharts' tooltips write style attributes,
# and a style cannot run code. Nothing is framed, posted or fetched from elsewhere.
ADMIN_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
ADMIN_PREFIX = "/admin/"


class AdminContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(ADMIN_PREFIX):
            response.headers.setdefault("Content-Security-Policy", ADMIN_POLICY)
        return response
