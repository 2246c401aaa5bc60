"""Online experiments (scope admin): create, list, read with metrics, stop, promote, withdraw."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from api.params import integer_parameter, query_limit, query_one
from api.serializers import ErrorSerializer
from api.views import ERRORS, NOT_FOUND, ApiView
from experiments import selectors, services
from experiments.models import Experiment, ExperimentStatus, VariantSnapshot
from experiments.variants import STRATEGIES
from recsys.errors import ValidationFailed
from recsys.recommendation_ids import VARIANT_NAME_PATTERN
from recsys.rules.scenarios import SCENARIO_NAME_PATTERN

CONFLICT = {409: OpenApiResponse(ErrorSerializer, description="Not in a state that allows this")}


class VariantConfigSerializer(serializers.Serializer):
    model_version = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Serve this collaborative version (ready, active or retired with vectors).",
    )
    strategy = serializers.ChoiceField(
        choices=STRATEGIES,
        required=False,
        help_text="collaborative (default), content (content profile), ranked (the ranking stage), popular, "
        "shuffled (the collaborative answer in random order: a baseline)",
    )
    diversity = serializers.FloatField(required=False, min_value=0, max_value=1, help_text="Overrides the request's.")
    scenario_rules = serializers.BooleanField(required=False, help_text="Apply the scenario's saved rules (default).")


class VariantRequestSerializer(serializers.Serializer):
    name = serializers.RegexField(f"^{VARIANT_NAME_PATTERN}$")
    weight = serializers.FloatField(required=False, help_text="Share of the traffic, in any unit (> 0); default 1.")
    config = VariantConfigSerializer(required=False)


class ExperimentRequestSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    scenario = serializers.RegexField(SCENARIO_NAME_PATTERN, required=False, allow_null=True)
    control = serializers.CharField(help_text="The name of the variant the others are compared against.")
    variants = VariantRequestSerializer(many=True, min_length=2, max_length=10, help_text="2 to 10 variants.")  # type: ignore[call-arg]
    alpha = serializers.FloatField(
        required=False, min_value=0, max_value=0.5, help_text="Significance level, above 0 and below 0.5; default 0.05."
    )
    mde = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=10,
        help_text="Minimum detectable effect relative to the control's CTR, above 0 (0.1 = 10%, the default).",
    )


class VariantAnswerSerializer(serializers.Serializer):
    name = serializers.CharField()
    weight = serializers.FloatField()
    config = serializers.DictField()
    users = serializers.IntegerField()
    impressions = serializers.IntegerField()
    clicks = serializers.IntegerField()
    ctr = serializers.FloatField()
    ctr_interval = serializers.ListField(child=serializers.FloatField(allow_null=True))
    conversions = serializers.DictField(child=serializers.IntegerField(), help_text="Attributed events per type.")
    conversion_rates = serializers.DictField(help_text="Per type: events per impression, interval, test.")
    revenue = serializers.FloatField(allow_null=True)
    items_shown = serializers.IntegerField()
    coverage = serializers.FloatField(allow_null=True, help_text="Distinct items shown / visible catalogue.")
    difference = serializers.FloatField(allow_null=True, help_text="CTR minus the control's CTR.")
    difference_interval = serializers.ListField(child=serializers.FloatField(allow_null=True), allow_null=True)
    p_value = serializers.FloatField(allow_null=True)
    significant = serializers.BooleanField()
    users_needed = serializers.IntegerField(allow_null=True, help_text="More users each variant needs for the mde.")
    method = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_null=True)


class ExperimentAnswerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    scenario = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=ExperimentStatus.values)
    control = serializers.CharField()
    winner = serializers.CharField(allow_null=True)
    serves_placement = serializers.BooleanField(
        help_text="The winner's configuration serves the scenario (or requests naming none) while no "
        "experiment runs there."
    )
    alpha = serializers.FloatField()
    mde = serializers.FloatField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    stopped_at = serializers.DateTimeField(allow_null=True)
    computed_at = serializers.DateTimeField(allow_null=True, help_text="When the metrics were computed.")
    variants = VariantAnswerSerializer(many=True)


def experiment_render(experiment: Experiment) -> dict[str, Any]:
    """The experiment with each variant's latest metrics snapshot (zeros before the first)."""
    latest = selectors.snapshots_latest(experiment_id=experiment.pk)
    variants = [
        _variant(v.name, v.weight, v.config, latest.get(v.pk), v.name == experiment.control)
        for v in experiment.variants.all()
    ]
    computed = max((s.computed_at for s in latest.values()), default=None)
    return {
        "id": experiment.pk,
        "name": experiment.name,
        "scenario": experiment.scenario,
        "status": experiment.status,
        "control": experiment.control,
        "winner": experiment.winner or None,
        "serves_placement": experiment.serves_placement,
        "alpha": experiment.alpha,
        "mde": experiment.mde,
        "created_at": experiment.created_at,
        "started_at": experiment.started_at,
        "stopped_at": experiment.stopped_at,
        "computed_at": computed,
        "variants": variants,
    }


def _variant(
    name: str, weight: float, config: dict[str, Any], snapshot: VariantSnapshot | None, control: bool
) -> dict[str, Any]:
    stats = snapshot.statistics if snapshot else {}
    return {
        "name": name,
        "weight": weight,
        "config": config,
        "users": snapshot.users if snapshot else 0,
        "impressions": snapshot.impressions if snapshot else 0,
        "clicks": snapshot.clicks if snapshot else 0,
        "ctr": stats.get("ctr", 0.0),
        "ctr_interval": stats.get("ctr_interval", [0.0, 1.0]),
        "conversions": snapshot.conversions if snapshot else {},
        "conversion_rates": stats.get("conversion_rates", {}),
        "revenue": snapshot.revenue if snapshot else None,
        "items_shown": snapshot.items_shown if snapshot else 0,
        "coverage": snapshot.coverage if snapshot else None,
        "difference": None if control else stats.get("difference"),
        "difference_interval": None if control else stats.get("difference_interval"),
        "p_value": None if control else stats.get("p_value"),
        "significant": bool(stats.get("significant", False)) and not control,
        "users_needed": None if control else stats.get("users_needed"),
        "method": stats.get("method"),
        "reason": "the control" if control else stats.get("reason", None if snapshot else "no metrics computed yet"),
    }


class ExperimentListView(ApiView):
    scopes = {"GET": "admin", "POST": "admin"}

    @extend_schema(
        operation_id="experiments_list",
        parameters=[
            OpenApiParameter("status", {"type": "string", "enum": ExperimentStatus.values}),
            integer_parameter("limit", minimum=1, maximum=200, default=50),
        ],
        responses={200: ExperimentAnswerSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        status = query_one(request, "status")
        if status is not None and status not in ExperimentStatus.values:
            raise ValidationFailed(
                f"status must be one of {', '.join(ExperimentStatus.values)}", details={"status": ["invalid"]}
            )
        experiments = selectors.experiments_list(status=status, limit=query_limit(request, default=50))
        return Response([experiment_render(e) for e in experiments])

    @extend_schema(
        operation_id="experiments_create",
        request=ExperimentRequestSerializer,
        responses={201: ExperimentAnswerSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request) -> Response:
        experiment = services.experiment_create(body=request.data)
        return Response(experiment_render(selectors.experiment_get(experiment_id=experiment.pk)), status=201)


class ExperimentDetailView(ApiView):
    scopes = {"GET": "admin"}

    @extend_schema(operation_id="experiment_get", responses={200: ExperimentAnswerSerializer, **ERRORS, **NOT_FOUND})
    def get(self, request: Request, experiment_id: int) -> Response:
        return Response(experiment_render(selectors.experiment_get(experiment_id=experiment_id)))


class ExperimentStopView(ApiView):
    scopes = {"POST": "admin"}

    @extend_schema(
        operation_id="experiment_stop",
        request=None,
        responses={200: ExperimentAnswerSerializer, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    def post(self, request: Request, experiment_id: int) -> Response:
        services.experiment_stop(experiment_id=experiment_id)
        return Response(experiment_render(selectors.experiment_get(experiment_id=experiment_id)))


class PromoteRequestSerializer(serializers.Serializer):
    variant = serializers.CharField(
        help_text="The winner: its model version (if any) is activated, and its strategy, diversity and "
        "scenario rules serve the placement while no experiment runs there."
    )


class ExperimentPromoteView(ApiView):
    scopes = {"POST": "admin"}

    @extend_schema(
        operation_id="experiment_promote",
        request=PromoteRequestSerializer,
        responses={200: ExperimentAnswerSerializer, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    def post(self, request: Request, experiment_id: int) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        if set(body) != {"variant"}:
            raise ValidationFailed('send {"variant": name}', details={"variant": ["required"]})
        services.experiment_promote(experiment_id=experiment_id, variant=body["variant"])
        return Response(experiment_render(selectors.experiment_get(experiment_id=experiment_id)))


class ExperimentWithdrawView(ApiView):
    scopes = {"POST": "admin"}

    @extend_schema(
        operation_id="experiment_withdraw",
        request=None,
        responses={200: ExperimentAnswerSerializer, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    def post(self, request: Request, experiment_id: int) -> Response:
        services.experiment_withdraw(experiment_id=experiment_id)
        return Response(experiment_render(selectors.experiment_get(experiment_id=experiment_id)))
