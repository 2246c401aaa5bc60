"""Model versions and training (scope admin)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from api.params import integer_parameter, query_limit, query_one
from api.serializers import ErrorSerializer
from api.views import ERRORS, NOT_FOUND, ApiView
from embeddings import operations, runs, selectors
from embeddings.models import Kind, ModelVersion
from recsys.errors import ValidationFailed

CONFLICT = {409: OpenApiResponse(ErrorSerializer, description="A run is already training / version not servable")}


class ModelVersionSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="pk")

    class Meta:
        model = ModelVersion
        fields = [
            "version",
            "kind",
            "algorithm",
            "params",
            "dimensions",
            "status",
            "metrics",
            "baseline_metrics",
            "timings",
            "counts",
            "progress",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]


class TrainRequestSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Kind.choices)


class TrainAnswerSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    training_run = serializers.IntegerField(help_text="The model version this run produces.")


class ModelListView(ApiView):
    scopes = {"GET": "admin"}

    @extend_schema(
        operation_id="models_list",
        parameters=[
            OpenApiParameter("kind", {"type": "string", "enum": Kind.values}),
            integer_parameter("limit", minimum=1, maximum=200, default=50),
        ],
        responses={200: ModelVersionSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        kind = query_one(request, "kind")
        if kind is not None and kind not in Kind.values:
            raise ValidationFailed(f"kind must be one of {', '.join(Kind.values)}", details={"kind": ["invalid"]})
        versions = selectors.model_versions_list(kind=kind, limit=query_limit(request, default=50))
        return Response(ModelVersionSerializer(versions, many=True).data)


class ModelTrainView(ApiView):
    scopes = {"POST": "admin"}

    @extend_schema(
        operation_id="models_train",
        request=TrainRequestSerializer,
        responses={202: TrainAnswerSerializer, **ERRORS, **CONFLICT},
    )
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        unknown = sorted(set(body) - {"kind"})
        if unknown or body.get("kind") not in Kind.values:
            raise ValidationFailed(
                'send {"kind": "collaborative" | "content"}' + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
                details={"kind": ["required, collaborative or content"]},
            )
        version = operations.training_start(kind=body["kind"])
        return Response({"task_id": version.task_id, "training_run": version.pk}, status=202)


class ModelActivateView(ApiView):
    scopes = {"POST": "admin"}

    @extend_schema(
        operation_id="model_activate",
        request=None,
        responses={200: ModelVersionSerializer, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    def post(self, request: Request, version: int) -> Response:
        return Response(ModelVersionSerializer(runs.model_version_activate(version_id=version)).data)
