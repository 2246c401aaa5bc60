"""The admin login locks a username out at an address after repeated wrong passwords (django-axes)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User as StaffUser
from django.test import Client

pytestmark = pytest.mark.django_db
RIGHT = "a-long-pass-phrase-1"


@pytest.fixture
def operator(settings) -> StaffUser:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # a second per guess otherwise
    return StaffUser.objects.create_user("operator", password=RIGHT, is_staff=True, is_superuser=True)


def log_in(password: str, *, username: str = "operator", address: str = "203.0.113.7"):
    return Client(REMOTE_ADDR=address).post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_the_right_password_logs_in(operator):
    assert log_in(RIGHT)["Location"] == "/admin/"


def test_after_five_wrong_passwords_even_the_right_one_is_refused(operator):
    wrong = [log_in(f"guess-{n}").status_code for n in range(5)]

    locked = log_in(RIGHT)

    assert wrong == [200] * 4 + [429]  # the form again with its error, then locked at the fifth
    assert locked.status_code == 429 and "Location" not in locked
    assert "too many login attempts" in locked.content.decode()
    assert locked["Retry-After"] == "900"  # the 15 minutes' cool-off (before: no Retry-After)


def test_the_lockout_is_per_username_and_address(operator):
    StaffUser.objects.create_user("colleague", password=RIGHT, is_staff=True)
    for n in range(5):
        log_in(f"guess-{n}")

    assert log_in(RIGHT, address="198.51.100.9").status_code == 302
    assert log_in(RIGHT, username="colleague").status_code == 302


def test_a_successful_login_resets_the_count(operator):
    for n in range(4):
        log_in(f"guess-{n}")
    assert log_in(RIGHT).status_code == 302

    for n in range(4):
        log_in(f"again-{n}")

    assert log_in(RIGHT).status_code == 302


def test_the_lockout_ends_after_the_cooloff(operator, settings):
    from datetime import timedelta

    settings.AXES_COOLOFF_TIME = timedelta(seconds=0)  # "15 minutes later"
    for n in range(5):
        log_in(f"guess-{n}")

    assert log_in(RIGHT).status_code == 302
