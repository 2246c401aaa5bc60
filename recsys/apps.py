"""App config of the core domain: users, items, interactions, event types, API keys."""

from __future__ import annotations

from django.apps import AppConfig


class RecsysConfig(AppConfig):
    name = "recsys"
    verbose_name = "Recommendation data"
