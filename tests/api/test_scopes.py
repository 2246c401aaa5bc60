"""Every API route declares the scope of every method it implements: none is open by accident."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from api.permissions import PUBLIC

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
PUBLIC_ROUTES = {"health", "schema", "docs", "not-found"}


def _api_patterns(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _api_patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern) and prefix.startswith("api/"):
            yield prefix + str(entry.pattern), entry


API_ROUTES = list(_api_patterns(get_resolver().url_patterns))


def test_the_api_has_routes_to_check():
    assert len(API_ROUTES) >= 8


@pytest.mark.parametrize(("route", "pattern"), API_ROUTES, ids=[r for r, _ in API_ROUTES])
def test_route_declares_a_scope_for_each_method(route, pattern):
    view_class = getattr(pattern.callback, "view_class", None) or getattr(pattern.callback, "cls", None)
    assert view_class is not None, f"{route} is not a class-based view"
    if pattern.name in PUBLIC_ROUTES:
        return
    implemented = [m.upper() for m in HTTP_METHODS if hasattr(view_class, m)]
    scopes = getattr(view_class, "scopes", {})
    assert implemented, route
    for method in implemented:
        assert scopes.get(method) in {"read", "write", "admin"}, f"{method} {route} declares no scope"
        assert scopes.get(method) != PUBLIC


def test_the_security_table_covers_every_route_and_method_with_its_declared_scope():
    from django.urls import resolve

    from tests.api.test_security import ENDPOINTS

    declared = set()
    for _, pattern in API_ROUTES:
        view_class = getattr(pattern.callback, "view_class", None) or getattr(pattern.callback, "cls", None)
        if pattern.name in PUBLIC_ROUTES:
            continue
        for method, scope in getattr(view_class, "scopes", {}).items():
            declared.add((pattern.name, method, scope))
    tested = {(resolve(path.split("?")[0]).url_name, method, scope) for method, path, scope in ENDPOINTS}

    assert tested == declared
