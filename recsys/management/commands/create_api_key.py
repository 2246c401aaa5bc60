"""Create an API key and print it once (only its hash is stored)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from recsys.api_keys import api_key_create
from recsys.errors import ValidationFailed


class Command(BaseCommand):
    help = "Create an API key with the given scopes and print it (it cannot be shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", default="read", help="comma-separated: read,write,admin")
        parser.add_argument("--rate-limit", default="", help="e.g. 600/min; default RECSYS_RATE_LIMIT")
        parser.add_argument("--quiet", action="store_true", help="print only the key")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            key, raw_key = api_key_create(name=options["name"], scopes=scopes, rate_limit=options["rate_limit"])
        except ValidationFailed as error:
            raise CommandError(error.message) from None
        if options["quiet"]:
            self.stdout.write(raw_key)
            return
        self.stdout.write(f"API key '{key.name}' with scopes {','.join(key.scopes)} (shown once, keep it safe):")
        self.stdout.write(raw_key)
