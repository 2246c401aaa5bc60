"""Create the demo's admin-scoped API key and staff user; print them as JSON (for make demo)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from recsys.api_keys import api_key_create
from recsys.models import ApiKey

DEMO_KEY_NAME = "demo"


class Command(BaseCommand):
    help = "Rotate the demo API key and the demo staff user's password; prints both once as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        ApiKey.objects.filter(name=DEMO_KEY_NAME).delete()
        _, raw_key = api_key_create(name=DEMO_KEY_NAME, scopes=list(ApiKey.SCOPES))
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username=options["username"])
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(json.dumps({"api_key": raw_key, "username": user.username, "password": password}))
