"""Request and response shapes. Requests are validated by recsys.validation (fast, shared with
the batch paths); these serializers render answers and document both sides in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from recsys.models import Interaction, Item, User


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class ItemWriteSerializer(serializers.Serializer):
    """Every field is optional; on update only the fields sent change. Unknown fields are rejected."""

    title = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    text = serializers.CharField(required=False, allow_blank=True, max_length=100_000)
    categories = serializers.ListField(
        child=serializers.RegexField(r"^[^\x00]*$", allow_blank=True, max_length=128),
        required=False,
        max_length=100,
        help_text="Blank categories are dropped, duplicates kept once.",
    )
    attributes = serializers.DictField(required=False)
    is_hidden = serializers.BooleanField(required=False)
    published_at = serializers.DateTimeField(required=False, allow_null=True)


class ItemBatchRowSerializer(ItemWriteSerializer):
    id = serializers.RegexField(r"^[A-Za-z0-9_.:@/-]{1,128}$")


# Batch rows are validated one by one and a bad row is reported in the answer's ``errors`` while
# the others are stored (API.md), so the schema takes any row: a bad row is not a bad request.
ROW_HELP = "Rows are validated one by one; rows that fail are reported in `errors`, the others stored."


class ItemBatchSerializer(serializers.Serializer):
    items = serializers.ListField(
        child=serializers.JSONField(help_text="An ItemBatchRow: an item upsert body with its id."),
        max_length=10_000,
        help_text=ROW_HELP,
    )


class BatchErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    id = serializers.CharField(required=False, allow_null=True)
    error = ErrorDetailSerializer()


class BatchResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField(help_text="Rows identical to what was stored (re-sends).")
    errors = BatchErrorSerializer(many=True)  # type: ignore[assignment]  # a field, not .errors


class VectorStatusSerializer(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True, help_text="null for custom spaces, which have no versions")
    updated_at = serializers.DateTimeField()
    cluster = serializers.IntegerField(
        required=False, help_text="content space: the item's k-means cluster in that version (items alike share one)"
    )


class ItemSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="external_id")
    vectors = serializers.SerializerMethodField()

    class Meta:
        model = Item
        fields = [
            "id",
            "title",
            "text",
            "categories",
            "attributes",
            "is_hidden",
            "is_stub",
            "published_at",
            "created_at",
            "updated_at",
            "vectors",
        ]

    @extend_schema_field(serializers.DictField(child=VectorStatusSerializer()))
    def get_vectors(self, item: Item) -> dict[str, dict[str, Any]]:
        """Per space, the active version that holds a vector of this item (none before training)."""
        return {
            space: {
                "version": v["version"],
                "updated_at": serializers.DateTimeField().to_representation(v["updated_at"]),
                **({"cluster": v["cluster"]} if "cluster" in v else {}),
            }
            for space, v in self.context.get("vectors", {}).items()
        }


class UserWriteSerializer(serializers.Serializer):
    attributes = serializers.DictField(required=False)


class UserSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="external_id")

    class Meta:
        model = User
        fields = ["id", "attributes", "created_at", "updated_at"]


class InteractionWriteSerializer(serializers.Serializer):
    user = serializers.RegexField(r"^[A-Za-z0-9_.:@/-]{1,128}$")
    item = serializers.RegexField(r"^[A-Za-z0-9_.:@/-]{1,128}$")
    type = serializers.CharField(
        help_text="A configured event type: view, click, add_to_cart, purchase, like, dislike, rating, ..."
    )
    value = serializers.FloatField(required=False, allow_null=True, help_text="Required for rating.")
    timestamp = serializers.DateTimeField(
        required=False, help_text="With a zone; defaults to the time received. Send it to make re-sends idempotent."
    )


class InteractionBatchSerializer(serializers.Serializer):
    interactions = serializers.ListField(
        child=serializers.JSONField(help_text="An InteractionWrite row: user, item, type, value?, timestamp?"),
        max_length=10_000,
        help_text=ROW_HELP,
    )


class InteractionSerializer(serializers.ModelSerializer):
    item = serializers.CharField(source="item.external_id")
    type = serializers.CharField(source="event_type")

    class Meta:
        model = Interaction
        fields = ["item", "type", "value", "weight", "timestamp"]


class HistorySerializer(serializers.Serializer):
    interactions = InteractionSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class HealthSerializer(serializers.Serializer):
    database = serializers.ChoiceField(choices=["ok", "down"])
    redis = serializers.ChoiceField(choices=["ok", "down"])
    models = serializers.DictField()
