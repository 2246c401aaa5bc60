"""The ingestion, reading and health endpoints: validate, call one service or selector, render."""

from __future__ import annotations

from django.conf import settings
from django.db import DatabaseError, connection
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
    throttle_classes,
)
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import serializers as s
from api.params import LIMIT_PARAMETER, query_limit, query_one
from api.permissions import PUBLIC
from embeddings.selectors import active_versions_summary, item_vectors_status
from recsys import replicas, selectors, services
from recsys.errors import NotFound
from recsys.selectors import CURSOR_PATTERN
from recsys.validation import clean_batch, clean_external_id, clean_user_fields

ERRORS = {
    400: OpenApiResponse(s.ErrorSerializer, description="Malformed JSON or invalid fields"),
    401: OpenApiResponse(s.ErrorSerializer, description="Missing or invalid API key"),
    403: OpenApiResponse(s.ErrorSerializer, description="The key lacks the scope"),
    429: OpenApiResponse(s.ErrorSerializer, description="Rate limited; see Retry-After"),
}
NOT_FOUND = {404: OpenApiResponse(s.ErrorSerializer, description="No such id")}
TOO_LARGE = {413: OpenApiResponse(s.ErrorSerializer, description="Over 10,000 rows or 10 MB")}


class ApiView(APIView):
    """Checks the client ids in the path once the caller is authenticated and allowed."""

    def initial(self, request: Request, *args: object, **kwargs: object) -> None:
        super().initial(request, *args, **kwargs)
        for name in ("item_id", "user_id"):
            if name in kwargs:
                clean_external_id(kwargs[name], name.removesuffix("_id"))


class ItemDetailView(ApiView):
    scopes = {"GET": "read", "PUT": "write", "DELETE": "write"}

    @extend_schema(operation_id="item_get", responses={200: s.ItemSerializer, **ERRORS, **NOT_FOUND})
    def get(self, request: Request, item_id: str) -> Response:
        item = selectors.item_get(external_id=item_id)
        vectors = item_vectors_status(item_id=item.pk)
        return Response(s.ItemSerializer(item, context={"vectors": vectors}).data)

    @extend_schema(
        operation_id="item_upsert",
        request=s.ItemWriteSerializer,
        responses={200: s.ItemSerializer, 201: s.ItemSerializer, **ERRORS},
    )
    def put(self, request: Request, item_id: str) -> Response:
        item, created = services.item_upsert(external_id=item_id, data=request.data)
        vectors = item_vectors_status(item_id=item.pk)  # as GET answers (was always {})
        return Response(s.ItemSerializer(item, context={"vectors": vectors}).data, status=201 if created else 200)

    @extend_schema(operation_id="item_delete", responses={204: None, **ERRORS, **NOT_FOUND})
    def delete(self, request: Request, item_id: str) -> Response:
        services.item_delete(external_id=item_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ItemBatchView(ApiView):
    scopes = {"POST": "write"}

    @extend_schema(
        operation_id="items_batch_upsert",
        request=s.ItemBatchSerializer,
        responses={200: s.BatchResultSerializer, **ERRORS, **TOO_LARGE},
    )
    def post(self, request: Request) -> Response:
        rows = clean_batch(request.data, "items", max_rows=settings.RECSYS_MAX_BATCH_ROWS)
        return Response(services.items_upsert(rows=rows).as_dict())


class UserDetailView(ApiView):
    scopes = {"GET": "read", "PUT": "write", "DELETE": "write"}

    @extend_schema(operation_id="user_get", responses={200: s.UserSerializer, **ERRORS, **NOT_FOUND})
    def get(self, request: Request, user_id: str) -> Response:
        return Response(s.UserSerializer(selectors.user_get(external_id=user_id)).data)

    @extend_schema(
        operation_id="user_upsert",
        request=s.UserWriteSerializer,
        responses={200: s.UserSerializer, 201: s.UserSerializer, **ERRORS},
    )
    def put(self, request: Request, user_id: str) -> Response:
        fields = clean_user_fields(request.data)
        user, created = services.user_upsert(external_id=user_id, attributes=fields.get("attributes"))
        return Response(s.UserSerializer(user).data, status=201 if created else 200)

    @extend_schema(operation_id="user_delete", responses={204: None, **ERRORS, **NOT_FOUND})
    def delete(self, request: Request, user_id: str) -> Response:
        services.user_delete(external_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserInteractionsView(ApiView):
    scopes = {"GET": "read"}

    @extend_schema(
        operation_id="user_interactions_list",
        parameters=[
            LIMIT_PARAMETER,
            OpenApiParameter(
                "cursor",
                {"type": "string", "pattern": CURSOR_PATTERN},
                description="next_cursor of the previous page (opaque; absent or empty for the first page)",
            ),
        ],
        responses={
            200: s.HistorySerializer,
            **ERRORS,
            400: OpenApiResponse(s.ErrorSerializer, description="An invalid limit, or a cursor of another shape"),
            **NOT_FOUND,
        },
    )
    def get(self, request: Request, user_id: str) -> Response:
        page = selectors.user_interactions_page(
            external_id=user_id, limit=query_limit(request), cursor=query_one(request, "cursor") or None
        )
        return Response(s.HistorySerializer(page).data)


class InteractionsView(ApiView):
    scopes = {"POST": "write"}

    @extend_schema(
        operation_id="interactions_ingest",
        request=s.InteractionBatchSerializer,
        responses={200: s.BatchResultSerializer, **ERRORS, **TOO_LARGE},
    )
    def post(self, request: Request) -> Response:
        rows = clean_batch(request.data, "interactions", max_rows=settings.RECSYS_MAX_BATCH_ROWS)
        return Response(services.interactions_ingest(rows=rows).as_dict())


class ImpressionsView(ApiView):
    scopes = {"POST": "write"}

    @extend_schema(
        operation_id="impressions_ingest",
        request=s.ImpressionBatchSerializer,
        responses={
            200: OpenApiResponse(
                s.BatchResultSerializer,
                description="`created`: impressions (shown items) stored; `unchanged`: re-sent ones; `updated`: 0.",
            ),
            **ERRORS,
            413: OpenApiResponse(s.ErrorSerializer, description="Over 10,000 rows, 100,000 shown items or 10 MB"),
        },
    )
    def post(self, request: Request) -> Response:
        rows = clean_batch(request.data, "impressions", max_rows=settings.RECSYS_MAX_BATCH_ROWS)
        return Response(services.impressions_ingest(rows=rows).as_dict())


class HealthView(ApiView):
    scopes = {"GET": PUBLIC}
    authentication_classes: list[type] = []
    throttle_classes: list[type] = []

    @extend_schema(operation_id="health", auth=[], responses={200: s.HealthSerializer, 503: s.HealthSerializer})
    def get(self, request: Request) -> Response:
        report = {
            "database": _database_status(),
            "redis": _redis_status(),
            "models": _models_status(),
            "replicas": _replicas_status(),
        }
        return Response(report, status=200 if report["database"] == "ok" else 503)


def _database_status() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception:
        return "down"


def _redis_status() -> str:
    import redis

    from recsys import redis_store

    try:
        return "ok" if redis_store.client("broker").ping() else "down"
    except (redis.RedisError, OSError):
        return "down"


def _replicas_status() -> list[dict[str, object]]:
    """Each read replica as this process last measured it (replicas down or lagging are skipped by
    serving, which then reads the primary: they never make the service unhealthy)."""
    return [{"alias": h.alias, "state": h.state, "lag_seconds": h.lag_seconds} for h in replicas.replicas_health()]


def _models_status() -> dict[str, object]:
    """Active model version per kind (null before the first successful training run)."""
    try:
        return dict(active_versions_summary())
    except DatabaseError:
        return {}


@extend_schema(exclude=True)  # outermost: on a function view it must wrap what @api_view made
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE"])
@authentication_classes([])
@permission_classes([AllowAny])
@throttle_classes([])
def not_found(request: Request, rest: str = "") -> Response:
    """Every unknown path under /api/ answers 404 in the JSON error format, whatever the method."""
    raise NotFound(f"no API endpoint at {request.path}")
