"""Experiments, their variants (serving configurations with weights) and metric snapshots."""

from __future__ import annotations

from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce


class ExperimentStatus(models.TextChoices):
    RUNNING = "running"
    STOPPED = "stopped"
    COMPLETED = "completed"  # stopped by promoting a winner


class Experiment(models.Model):
    """Splits the traffic of one scenario (or of requests naming none) between variants."""

    name = models.CharField(max_length=200)
    scenario = models.CharField(max_length=64, null=True, blank=True, help_text="Null: requests that name none.")
    status = models.CharField(
        max_length=10, choices=ExperimentStatus.choices, default=ExperimentStatus.RUNNING, db_index=True
    )
    control = models.CharField(max_length=32, help_text="The variant the others are compared against.")
    alpha = models.FloatField(default=0.05, help_text="Two-sided significance level.")
    mde = models.FloatField(default=0.1, help_text="Minimum detectable effect: relative change of CTR.")
    winner = models.CharField(max_length=32, blank=True, default="")
    serves_placement = models.BooleanField(
        default=False,
        help_text="The promoted winner's configuration serves this experiment's scenario (or requests naming "
        "none) while no experiment runs there, until withdrawn or another winner is promoted there.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # Null and a name both count: one running experiment among requests that name no scenario.
            models.UniqueConstraint(
                Coalesce("scenario", Value("")),
                condition=Q(status="running"),
                name="experiment_one_running_per_scenario",
            ),
            # One promoted configuration per placement.
            models.UniqueConstraint(
                Coalesce("scenario", Value("")),
                condition=Q(serves_placement=True),
                name="experiment_one_promoted_per_scenario",
            ),
            models.CheckConstraint(condition=Q(alpha__gt=0, alpha__lt=0.5), name="experiment_alpha_range"),
            models.CheckConstraint(condition=Q(mde__gt=0), name="experiment_mde_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class Variant(models.Model):
    """One serving configuration of an experiment; ``weight`` is its share of the traffic."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=32)
    weight = models.FloatField()
    config = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="variant_unique_name"),
            models.CheckConstraint(condition=Q(weight__gt=0), name="variant_weight_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id}/{self.name}"


class VariantSnapshot(models.Model):
    """One metrics computation of one variant: what the experiment page and its chart read."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="snapshots")
    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="snapshots")
    computed_at = models.DateTimeField()
    users = models.BigIntegerField()
    impressions = models.BigIntegerField()
    clicks = models.BigIntegerField()
    items_shown = models.BigIntegerField(help_text="Distinct items shown.")
    coverage = models.FloatField(null=True, blank=True, help_text="Distinct items shown / catalogue size.")
    conversions = models.JSONField(default=dict, blank=True, help_text="Attributed events per event type.")
    revenue = models.FloatField(null=True, blank=True)
    statistics = models.JSONField(default=dict, blank=True, help_text="CTR interval and the test against control.")

    class Meta:
        ordering = ["computed_at", "variant_id"]
        indexes = [models.Index(fields=["experiment", "-computed_at"], name="snapshot_experiment_latest")]

    def __str__(self) -> str:
        return f"{self.variant_id} @ {self.computed_at:%Y-%m-%d %H:%M}"
