"""The admin's pages carry a Content-Security-Policy that allows scripts from this site only, and
its templates hold nothing that such a policy would block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client

from recsys.csp import ADMIN_POLICY

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/dashboard/", "/admin/embeddings/modelversion/", "/admin/embeddings/modelversion/map/"],
)
def test_admin_pages_have_a_policy_that_refuses_inline_and_foreign_scripts(admin_client, path):
    response = admin_client.get(path)

    assert response.status_code == 200
    policy = directives(response["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]


def test_the_login_page_has_the_policy_too():
    assert Client().get("/admin/login/")["Content-Security-Policy"] == ADMIN_POLICY


def test_the_api_is_left_alone(admin_client):
    assert "Content-Security-Policy" not in admin_client.get("/api/v1/health")


def test_admin_templates_hold_no_inline_script_or_event_handler():
    templates = [*ROOT.glob("recsys/templates/**/*.html"), *ROOT.glob("embeddings/templates/**/*.html")]
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
    handler = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)

    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in templates
        for pattern in (inline_script, handler)
        for match in pattern.finditer(path.read_text())
    ]

    assert templates and offenders == []
