"""Business rules: saved scenarios (scope admin) and a user's hidden items (scope write)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from api.serializers import ExternalIdField
from api.views import ERRORS, NOT_FOUND, ApiView
from recsys.models import Scenario
from recsys.rules import scenarios
from recsys.rules.expressions import MAX_CHARS
from recsys.rules.ruleset import MAX_BOOSTS, MAX_FACTOR, MIN_FACTOR


class BoostSerializer(serializers.Serializer):
    expression = serializers.CharField(max_length=MAX_CHARS)
    factor = serializers.FloatField(min_value=MIN_FACTOR, max_value=MAX_FACTOR)


class PinSerializer(serializers.Serializer):
    item = ExternalIdField()
    position = serializers.IntegerField(min_value=1, max_value=scenarios.MAX_POSITION, help_text="1-based")


class ScenarioWriteSerializer(serializers.Serializer):
    filter = serializers.CharField(required=False, allow_blank=True, max_length=MAX_CHARS)
    boost = serializers.ListField(child=BoostSerializer(), required=False, max_length=MAX_BOOSTS)
    pins = serializers.ListField(child=PinSerializer(), required=False, max_length=scenarios.MAX_PINS)
    buries = serializers.ListField(
        child=ExternalIdField(),
        required=False,
        max_length=scenarios.MAX_BURIES,
        help_text="items ranked after every other candidate",
    )


class ScenarioSerializer(serializers.ModelSerializer):
    boost = serializers.JSONField(source="boosts")

    class Meta:
        model = Scenario
        fields = ["name", "filter", "boost", "pins", "buries", "created_at", "updated_at"]


class ScenarioListSerializer(serializers.Serializer):
    scenarios = ScenarioSerializer(many=True)


class ScenarioListView(ApiView):
    scopes = {"GET": "admin"}

    @extend_schema(operation_id="scenarios_list", responses={200: ScenarioListSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"scenarios": ScenarioSerializer(scenarios.scenarios_list(), many=True).data})


class ScenarioDetailView(ApiView):
    scopes = {"GET": "admin", "PUT": "admin", "DELETE": "admin"}

    @extend_schema(operation_id="scenario_get", responses={200: ScenarioSerializer, **ERRORS, **NOT_FOUND})
    def get(self, request: Request, name: str) -> Response:
        return Response(ScenarioSerializer(scenarios.scenario_get(name=name)).data)

    @extend_schema(
        operation_id="scenario_put",
        description="Create or replace a scenario; every expression is checked (400 with the position of a fault).",
        request=ScenarioWriteSerializer,
        responses={200: ScenarioSerializer, 201: ScenarioSerializer, **ERRORS},
    )
    def put(self, request: Request, name: str) -> Response:
        scenario, created = scenarios.scenario_put(name=name, body=request.data)
        return Response(ScenarioSerializer(scenario).data, status=201 if created else 200)

    @extend_schema(operation_id="scenario_delete", responses={204: None, **ERRORS, **NOT_FOUND})
    def delete(self, request: Request, name: str) -> Response:
        scenarios.scenario_delete(name=name)
        return Response(status=204)


class HiddenItemsSerializer(serializers.Serializer):
    items = serializers.ListField(child=ExternalIdField(), min_length=1, max_length=scenarios.MAX_HIDDEN_PER_REQUEST)


class HiddenChangeSerializer(serializers.Serializer):
    changed = serializers.IntegerField(help_text="items newly hidden (POST) or un-hidden (DELETE)")
    unknown_items = serializers.ListField(child=serializers.CharField(), help_text="ids of no stored item: ignored")


class HiddenListSerializer(serializers.Serializer):
    items = serializers.ListField(child=serializers.CharField(), help_text="most recently hidden first")


class UserHiddenView(ApiView):
    scopes = {"GET": "read", "POST": "write", "DELETE": "write"}

    @extend_schema(operation_id="user_hidden_list", responses={200: HiddenListSerializer, **ERRORS, **NOT_FOUND})
    def get(self, request: Request, user_id: str) -> Response:
        return Response({"items": scenarios.hidden_items_list(user_external_id=user_id)})

    @extend_schema(
        operation_id="user_hidden_add",
        description="Never recommend these items to this user, on any endpoint that knows the user.",
        request=HiddenItemsSerializer,
        responses={200: HiddenChangeSerializer, **ERRORS, **NOT_FOUND},
    )
    def post(self, request: Request, user_id: str) -> Response:
        items = scenarios.hidden_items_check(request.data)
        return Response(scenarios.hidden_items_add(user_external_id=user_id, items=items))

    @extend_schema(
        operation_id="user_hidden_remove",
        request=HiddenItemsSerializer,
        responses={200: HiddenChangeSerializer, **ERRORS, **NOT_FOUND},
    )
    def delete(self, request: Request, user_id: str) -> Response:
        items = scenarios.hidden_items_check(request.data)
        return Response(scenarios.hidden_items_remove(user_external_id=user_id, items=items))
