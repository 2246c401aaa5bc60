"""App config of the core domain: users, items, interactions, event types, API keys."""

from __future__ import annotations

from django.apps import AppConfig


class RecsysConfig(AppConfig):
    name = "recsys"
    verbose_name = "Recommendation data"

    def ready(self) -> None:
        # The admin app (first in INSTALLED_APPS) has registered every app's ModelAdmins by now.
        from django.contrib import admin

        from recsys.admin_guard import admins_guard

        admins_guard(admin.site)
