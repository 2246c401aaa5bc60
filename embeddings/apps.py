"""App config of the embeddings app (model versions and vectors)."""

from __future__ import annotations

from django.apps import AppConfig


class EmbeddingsConfig(AppConfig):
    name = "embeddings"
    verbose_name = "Embeddings"

    def ready(self) -> None:
        from embeddings.answer_cache import answers_invalidate, answers_invalidate_all
        from embeddings.content import content_encode_schedule
        from embeddings.freshness import users_fold_in_schedule
        from embeddings.popularity import popular_rankings_forget
        from recsys import signals

        def interactions_stored(sender: object, user_ids: list[int], external_ids: list[str], **kwargs: object) -> None:
            answers_invalidate(owners=[f"user:{user}" for user in external_ids])
            users_fold_in_schedule(user_ids=user_ids)

        def user_deleted(sender: object, external_id: str, **kwargs: object) -> None:
            answers_invalidate(owners=[f"user:{external_id}"])

        def catalogue_changed(sender: object, **kwargs: object) -> None:
            # Hidden flags and categories filter every list; a new item may be in any of them.
            answers_invalidate_all()
            popular_rankings_forget()

        def items_stored(sender: object, **kwargs: object) -> None:
            catalogue_changed(sender)
            content_encode_schedule()

        signals.interactions_stored.connect(interactions_stored, weak=False, dispatch_uid="embeddings-interactions")
        signals.user_deleted.connect(user_deleted, weak=False, dispatch_uid="embeddings-user-deleted")
        signals.user_rules_changed.connect(user_deleted, weak=False, dispatch_uid="embeddings-user-rules")
        signals.items_stored.connect(items_stored, weak=False, dispatch_uid="embeddings-items-stored")
        signals.item_deleted.connect(catalogue_changed, weak=False, dispatch_uid="embeddings-item-deleted")
        signals.interactions_imported.connect(
            catalogue_changed, weak=False, dispatch_uid="embeddings-interactions-imported"
        )
