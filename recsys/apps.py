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
        self._api_key_changes()

    @staticmethod
    def _api_key_changes() -> None:
        """A key saved (the admin's edits) or deleted makes every web process look its keys up again
        (recsys.api_keys); a new key makes no cached one stale."""
        from django.db.models.signals import post_delete, post_save

        from recsys.api_keys import api_key_cache_invalidate
        from recsys.models import ApiKey

        def saved(sender: object, created: bool, **kwargs: object) -> None:
            if not created:
                api_key_cache_invalidate()

        def deleted(sender: object, **kwargs: object) -> None:
            api_key_cache_invalidate()

        post_save.connect(saved, sender=ApiKey, weak=False, dispatch_uid="api-key-saved")
        post_delete.connect(deleted, sender=ApiKey, weak=False, dispatch_uid="api-key-deleted")

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
