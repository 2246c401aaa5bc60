"""Users, items and interactions keyed by the client's own ids; event types; hashed API keys."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex, GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import ProtectedError
from django.db.models.functions import Now

from recsys.ids import ID_MAX_LENGTH, STORED_ID_PATTERN, external_id_validate
from recsys.rates import InvalidRate, parse_rate

# The whole id rule for forms (the admin); the database's check constraint holds its characters and
# length (recsys.ids.STORED_ID_PATTERN), the API and importers refuse the reserved shapes first.
external_id_validator = external_id_validate


class User(models.Model):
    """A person the client's product recommends to (not an operator: those are auth users)."""

    external_id = models.CharField("id", max_length=ID_MAX_LENGTH, validators=[external_id_validator])
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        verbose_name = "end user"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(external_id__regex=STORED_ID_PATTERN), name="user_external_id_format"
            ),
            # A constraint rather than unique=True: Django would add a second (LIKE) index that
            # nothing uses and every insert pays for.
            models.UniqueConstraint(fields=["external_id"], name="user_external_id_unique"),
        ]

    def __str__(self) -> str:
        return self.external_id


class Item(models.Model):
    """Something to recommend. ``is_stub`` items were created by an interaction and have no text yet."""

    external_id = models.CharField("id", max_length=ID_MAX_LENGTH, validators=[external_id_validator])
    title = models.TextField(blank=True, default="")
    text = models.TextField(blank=True, default="")
    categories = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    is_hidden = models.BooleanField(default=False)
    is_stub = models.BooleanField(default=False)
    published_at = models.DateTimeField(null=True, blank=True)
    # Never recommended outside [available_from, available_until); either end may be open.
    available_from = models.DateTimeField(null=True, blank=True)
    available_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())
    # Set whenever title, text or categories change: the content encoder picks these items up.
    content_changed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    search_vector = models.GeneratedField(
        expression=SearchVector("title", weight="A", config="english")
        + SearchVector("text", weight="B", config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(external_id__regex=STORED_ID_PATTERN), name="item_external_id_format"
            ),
            # A constraint rather than unique=True: Django would add a second (LIKE) index that
            # nothing uses and every insert pays for.
            models.UniqueConstraint(fields=["external_id"], name="item_external_id_unique"),
        ]
        indexes = [
            GinIndex(fields=["search_vector"], name="item_search_vector_gin"),
            GinIndex(fields=["categories"], name="item_categories_gin"),
        ]

    def __str__(self) -> str:
        return self.title or self.external_id


class EventType(models.Model):
    """A kind of interaction and the confidence it carries (``rating`` takes its weight from ``value``)."""

    name = models.SlugField(max_length=32, primary_key=True)
    weight = models.FloatField(help_text="Confidence of one event; negative for dislikes.")
    uses_value = models.BooleanField(
        default=False, help_text="Weight is the event's value times this weight (ratings)."
    )
    description = models.CharField(max_length=200, blank=True)
    counts_as_click = models.BooleanField(
        default=False,
        help_text="An attributed event of this type counts as a click of the impression (experiments' CTR).",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        if Interaction.objects.filter(event_type=self.name).exists():
            raise ProtectedError(f"interactions of type {self.name!r} exist; change its weight instead", {self})
        return super().delete(*args, **kwargs)


class Interaction(models.Model):
    """One event of a user on an item. (user, item, type, timestamp) is unique: re-sends are no-ops."""

    # No database foreign keys: the writer checks a batch's users and items once each under a lock that
    # deletes take, and triggers delete a deleted user's or item's interactions (migration 0009; the
    # per-row checks were ~40% of PostgreSQL's CPU per API batch). Django still joins and cascades.
    user = models.ForeignKey(
        User, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="interactions"
    )
    item = models.ForeignKey(
        Item, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="interactions"
    )
    # The type's name, not a foreign key: ingestion validates it against EventType, and a foreign
    # key check per row cost ~6 ms of every 1,000-event batch at commit.
    event_type = models.CharField(max_length=32)
    value = models.FloatField(null=True, blank=True)
    weight = models.FloatField()
    timestamp = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "item", "event_type", "timestamp"], name="interaction_unique_event")
        ]
        indexes = [
            # A user's history, newest first, with (timestamp, id) as the keyset cursor.
            models.Index(fields=["user", "-timestamp", "-id"], name="interaction_user_history"),
            # Popularity windows and item deletes.
            models.Index(fields=["item", "timestamp"], name="interaction_item_time"),
            # "What arrived since" sweeps scan by arrival time; BRIN is tiny and free to maintain
            # because rows arrive in created_at order.
            BrinIndex(fields=["created_at"], name="interaction_created_brin"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.event_type} {self.item_id} @ {self.timestamp:%Y-%m-%d %H:%M}"


class Impression(models.Model):
    """One item shown to a user at a position. The table is range-partitioned by ``shown_at`` (monthly,
    see ``recsys.feedback.partitions``): the database's primary key is (id, shown_at)."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, db_index=False, related_name="+")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, db_index=False, related_name="+")
    position = models.IntegerField(help_text="1-based display order.")
    shown_at = models.DateTimeField()
    recommendation_id = models.CharField(max_length=80, null=True, blank=True)
    # Decoded from the recommendation id: plain integers, an experiment may be deleted later.
    experiment_id = models.BigIntegerField(null=True, blank=True)
    variant = models.CharField(max_length=32, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        constraints = [
            # Re-sending an impression is a no-op; its prefix (user, item, shown_at) also serves attribution.
            models.UniqueConstraint(
                fields=["user", "item", "shown_at", "recommendation_id"],
                name="impression_unique_showing",
                nulls_distinct=False,
            )
        ]
        indexes = [
            models.Index(
                fields=["experiment_id", "variant", "shown_at"],
                name="impression_experiment",
                condition=models.Q(experiment_id__isnull=False),
            ),
            # "Any impression within the attribution window?" (every interactions batch with clicks asks):
            # without it PostgreSQL read a month's whole primary key when the answer was no (~8 ms per
            # batch, growing with the month). Not BRIN: freshly inserted pages stay unsummarised until a
            # vacuum, and the bitmap read all of them (measured 60 ms per batch).
            models.Index(fields=["shown_at"], name="impression_shown_at"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} saw {self.item_id} at #{self.position} @ {self.shown_at:%Y-%m-%d %H:%M}"


class Attribution(models.Model):
    """A click-type interaction credited to the recommendation (and impression) that led to it.
    Unique by the interaction's identity, so re-sending the interaction is a no-op."""

    # No database foreign keys, as the interactions' (migration 0009): written in the same transactions, under
    # the same lock; the delete triggers remove them too.
    user = models.ForeignKey(User, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="+")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="+")
    event_type = models.CharField(max_length=32)
    occurred_at = models.DateTimeField(help_text="The interaction's timestamp.")
    value = models.FloatField(null=True, blank=True)
    weight = models.FloatField()
    recommendation_id = models.CharField(max_length=80, null=True, blank=True)
    experiment_id = models.BigIntegerField(null=True, blank=True)
    variant = models.CharField(max_length=32, null=True, blank=True)
    shown_at = models.DateTimeField(null=True, blank=True, help_text="The attributed impression's time, if any.")
    position = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "item", "event_type", "occurred_at"], name="attribution_unique_event"
            )
        ]
        indexes = [
            models.Index(
                fields=["experiment_id", "variant", "occurred_at"],
                name="attribution_experiment",
                condition=models.Q(experiment_id__isnull=False),
            ),
            models.Index(fields=["item"], name="attribution_item"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.event_type} {self.item_id} ← {self.recommendation_id or 'impression'}"


class ApiKey(models.Model):
    """A client credential. Only the SHA-256 of the key is stored; the key is shown once."""

    SCOPES = ("read", "write", "admin")

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, help_text="First characters, to recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = ArrayField(models.CharField(max_length=16), default=list)
    rate_limit = models.CharField(max_length=32, blank=True, help_text="e.g. '600/min'; empty uses RECSYS_RATE_LIMIT.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        unknown = sorted(set(self.scopes) - set(self.SCOPES))
        if unknown or not self.scopes:
            raise ValidationError(
                {"scopes": f"choose from {', '.join(self.SCOPES)}; got {', '.join(unknown) or 'none'}"}
            )
        if self.rate_limit.strip():
            try:
                parse_rate(self.rate_limit.strip())
            except InvalidRate as error:
                raise ValidationError({"rate_limit": str(error)}) from None

    def has_scope(self, scope: str) -> bool:
        # Scopes are independent grants: an ingestion-only key cannot read, and vice versa.
        return scope in self.scopes


class Scenario(models.Model):
    """Saved business rules that requests apply by name (``scenario=``): a filter, boosts, pins, buries.

    Expressions are validated when saved (``recsys.rules.expressions``); ``boosts`` is a list of
    ``{"expression", "factor"}``, ``pins`` of ``{"item", "position"}`` (1-based), ``buries`` of item ids.
    """

    name = models.SlugField(max_length=64, unique=True)
    filter = models.TextField(blank=True, default="")
    boosts = models.JSONField(default=list, blank=True)
    pins = models.JSONField(default=list, blank=True)
    buries = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class HiddenItem(models.Model):
    """An item a user asked never to be recommended again."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, db_index=False, related_name="hidden_items")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="hidden_by")
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "item"], name="hidden_item_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} hides {self.item_id}"
