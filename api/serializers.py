"""Request and response shapes. Request bodies of the API's own endpoints are validated by the
``RequestSerializer``s here; ingestion rows by recsys.validation (fast, shared with the file
imports), which the ingestion serializers below document in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from recsys.ids import EXTERNAL_ID_PATTERN, ID_RULE, is_external_id
from recsys.models import Interaction, Item, User
from recsys.rules.expressions import MAX_CHARS as MAX_EXPRESSION_CHARS
from recsys.rules.ruleset import MAX_BOOSTS

# ---- strict request fields: exactly the JSON types the schema declares ----------------------------


@extend_schema_field({"type": "string", "pattern": EXTERNAL_ID_PATTERN})
class ExternalIdField(serializers.Field):
    """A client id (recsys.ids's rule); only a JSON string."""

    default_error_messages = {"invalid": f"must be {ID_RULE}"}

    def to_internal_value(self, data: Any) -> str:
        if not is_external_id(data):
            self.fail("invalid")
        return str(data)

    def to_representation(self, value: Any) -> str:
        return str(value)


class StrictCharField(serializers.CharField):
    """Only a JSON string (DRF's CharField also takes numbers); NUL, which PostgreSQL text cannot
    hold, is dropped rather than refused, as in every other text the API stores."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data.replace("\x00", "")))


class StrictIntegerField(serializers.IntegerField):
    """Only a JSON integer (DRF's IntegerField also takes "5", 5.0 and true-ish strings)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class RequestSerializer(serializers.Serializer):
    """A request body: a JSON object whose unknown fields are refused (a typo is never dropped)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


# ---- bodies and answers ----------------------------------------------------------------------------


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
    available_from = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Never recommended before this time (null: no start)."
    )
    available_until = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Never recommended from this time on (null: no end)."
    )


# Batch rows are validated one by one and a bad row is reported in the answer's ``errors`` while
# the others are stored (API.md), so the schema takes any row: a bad row is not a bad request.
ROW_HELP = "Rows are validated one by one; rows that fail are reported in `errors`, the others stored."


class ItemBatchSerializer(serializers.Serializer):
    items = serializers.ListField(
        child=serializers.JSONField(help_text="An item upsert body with its `id`."),
        max_length=10_000,
        help_text=ROW_HELP,
    )


class BatchErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    id = serializers.CharField(
        allow_null=True, help_text="the row's id (items, users); null for interactions and impressions"
    )
    item = serializers.JSONField(
        required=False, help_text="Impressions: the shown item rejected (the row's others are kept)."
    )
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
            "available_from",
            "available_until",
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


class InteractionBatchSerializer(serializers.Serializer):
    interactions = serializers.ListField(
        child=serializers.JSONField(
            help_text=(
                "An interaction: user and item ids, type, value (required for rating), timestamp (with a zone), "
                "recommendation_id (optional: the answer that led to it; a click-type event is attributed to it)."
            )
        ),
        max_length=10_000,
        help_text=ROW_HELP,
    )


class ImpressionBatchSerializer(serializers.Serializer):
    impressions = serializers.ListField(
        child=serializers.JSONField(
            help_text=(
                "What one user was shown: `user`, `items` (ids in display order, 1 to 1,000; each is one "
                "impression at its 1-based position), `recommendation_id` of the answer shown (optional) and "
                "`timestamp` (optional, with a zone; default: when that recommendation id was minted, else now)."
            )
        ),
        max_length=10_000,
        help_text=ROW_HELP
        + " An invalid or unknown item is reported alone (with `item`); the row's others are stored.",
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


class ReplicaHealthSerializer(serializers.Serializer):
    alias = serializers.CharField(help_text="replica_1, replica_2, ... in the order of DATABASE_REPLICA_URLS")
    state = serializers.ChoiceField(choices=["ok", "lagging", "down"])
    lag_seconds = serializers.FloatField(allow_null=True, help_text="replay lag when last measured; null when down")


class HealthSerializer(serializers.Serializer):
    database = serializers.ChoiceField(choices=["ok", "down"])
    redis = serializers.ChoiceField(choices=["ok", "down"])
    models = serializers.DictField()
    replicas = ReplicaHealthSerializer(many=True, help_text="read replicas (empty without DATABASE_REPLICA_URLS)")


MAX_SESSION_ITEMS = 100


class SessionRequestSerializer(RequestSerializer):
    items = serializers.ListField(child=ExternalIdField(), min_length=1, max_length=MAX_SESSION_ITEMS)
    negative_items = serializers.ListField(child=ExternalIdField(), required=False, max_length=MAX_SESSION_ITEMS)
    limit = StrictIntegerField(default=10, min_value=1, max_value=200)
    category = StrictCharField(required=False, allow_blank=True, max_length=128)
    filter = StrictCharField(
        required=False, allow_blank=True, max_length=MAX_EXPRESSION_CHARS, help_text="a filter expression (README)"
    )
    boost = serializers.ListField(
        child=StrictCharField(max_length=MAX_EXPRESSION_CHARS + 20),
        required=False,
        max_length=MAX_BOOSTS,
        help_text='"<expression>:<factor>" each',
    )
    scenario = StrictCharField(required=False, max_length=64, help_text="apply this saved scenario's rules")
    user = ExternalIdField(required=False, help_text="never recommend this user's hidden items")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        both = sorted(set(attrs["items"]) & set(attrs.get("negative_items", [])))
        if both:  # liked and disliked at once: the query would cancel out to nothing
            raise serializers.ValidationError({"negative_items": [f"also in items: {', '.join(both[:10])}"]})
        return attrs
