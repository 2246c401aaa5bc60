"""The admin site's middleware (sessions, users, messages) runs for the site and not for the API."""

from __future__ import annotations

import pytest
from django.test import Client

from recsys.models import ApiKey

pytestmark = pytest.mark.django_db


def test_an_api_request_gets_no_session_user_or_message_work(reader, monkeypatch):
    from django.contrib.auth.middleware import AuthenticationMiddleware
    from django.contrib.messages.middleware import MessageMiddleware
    from django.contrib.sessions.middleware import SessionMiddleware

    def refuse(*args, **kwargs):
        raise AssertionError("the admin's middleware ran on an API request")

    for middleware in (SessionMiddleware, AuthenticationMiddleware, MessageMiddleware):
        monkeypatch.setattr(middleware, "process_request", refuse)

    response = reader.get("/api/v1/items/popular")

    assert response.status_code == 200
    assert not hasattr(response.wsgi_request, "session")
    assert "sessionid" not in response.cookies and "csrftoken" not in response.cookies


def test_api_answers_keep_the_security_headers(reader):
    response = reader.get("/api/v1/items/popular")

    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_the_admin_still_has_sessions_and_its_csrf_check(admin_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    key = ApiKey.objects.create(name="k", prefix="rsk_x", key_hash="h" * 64, scopes=["read"])

    page = browser.get("/admin/recsys/apikey/")
    forged = browser.post("/admin/recsys/apikey/", {"action": "revoke", "_selected_action": [key.pk]})

    assert page.status_code == 200 and page.wsgi_request.user.is_staff
    assert forged.status_code == 403


def test_the_api_docs_page_keeps_the_site_stack():
    response = Client().get("/api/docs/")

    assert response.status_code == 200
    assert hasattr(response.wsgi_request, "session")
