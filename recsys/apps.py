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
        self._read_your_writes()

    @staticmethod
    def _read_your_writes() -> None:
        """A user who just wrote reads the primary for a while (recsys.replicas)."""
        from recsys import signals
        from recsys.replicas import users_wrote

        def interactions_stored(sender: object, external_ids: list[str], **kwargs: object) -> None:
            users_wrote(external_ids=external_ids)

        def one_user_wrote(sender: object, external_id: str, **kwargs: object) -> None:
            users_wrote(external_ids=[external_id])

        signals.interactions_stored.connect(interactions_stored, weak=False, dispatch_uid="replicas-interactions")
        signals.user_deleted.connect(one_user_wrote, weak=False, dispatch_uid="replicas-user-deleted")
        # Hidden items change what the user may be shown: their next answers come from the primary.
        signals.user_rules_changed.connect(one_user_wrote, weak=False, dispatch_uid="replicas-user-rules")
