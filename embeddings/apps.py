"""App config of the embeddings app (model versions and vectors)."""

from __future__ import annotations

from django.apps import AppConfig


class EmbeddingsConfig(AppConfig):
    name = "embeddings"
    verbose_name = "Embeddings"

    def ready(self) -> None:
        from embeddings.freshness import users_fold_in_schedule
        from recsys.signals import interactions_stored

        def schedule(sender: object, user_ids: list[int], **kwargs: object) -> None:
            users_fold_in_schedule(user_ids=user_ids)

        interactions_stored.connect(schedule, weak=False, dispatch_uid="embeddings-fold-in")
