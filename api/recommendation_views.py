"""Recommendation endpoints (scope read): personalised, similar, session and popular."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from api.model_views import CONFLICT
from api.params import (
    CATEGORY_PARAMETER,
    EXCLUDE_PARAMETER,
    LIMIT_PARAMETER,
    RULE_FIELDS,
    RULE_PARAMETERS,
    USER_PARAMETER,
    body_or_query_rules,
    boolean_parameter,
    number_parameter,
    query_body_fields_refuse,
    query_bool,
    query_category,
    query_float,
    query_ids,
    query_limit,
    query_one,
    query_rules,
    query_scenario,
)
from api.serializers import ErrorSerializer, SessionRequestSerializer
from api.views import ERRORS, NOT_FOUND, ApiView
from embeddings import recommendations, search, similarity, spaces
from embeddings.recommendations import Answer, Recommendation
from embeddings.space_admission import custom_space_admit
from experiments.selectors import Assignment, experiment_assign
from experiments.serving import variant_user_recommendations
from recsys.errors import ValidationFailed
from recsys.models import ApiKey
from recsys.recommendation_ids import RECOMMENDATION_ID_MAX_LENGTH, recommendation_id_mint
from recsys.validation import SPACE_PATTERN


class RecommendedItemSerializer(serializers.Serializer):
    id = serializers.CharField()
    score = serializers.FloatField()
    reason = serializers.DictField(required=False, help_text="With explain=true: the user's items that contributed.")


class ModelRefSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="collaborative, content, or hybrid (both versions named)")
    version = serializers.IntegerField()
    content_version = serializers.IntegerField(required=False, help_text="hybrid answers: the content version")


class ExperimentRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    variant = serializers.CharField()


class AnswerSerializer(serializers.Serializer):
    items = RecommendedItemSerializer(many=True)
    model = ModelRefSerializer(allow_null=True)
    strategy = serializers.CharField(
        help_text="collaborative, collaborative_fold_in, collaborative_session, content, content_profile, "
        "content_session, hybrid, custom, semantic, keyword, popular, popular_in_category, recent, shuffled"
    )
    recommendation_id = serializers.CharField(
        max_length=RECOMMENDATION_ID_MAX_LENGTH,
        help_text="New for every answer: send it with the impressions and interactions this answer led to.",
    )
    experiment = ExperimentRefSerializer(
        allow_null=True, help_text="The experiment and variant that served this answer; null when none did."
    )


def render(answer: Answer, assignment: Assignment | None = None) -> Response:
    # Plain dicts, not dataclasses.asdict (which deep-copies every field): a tenth of the web
    # process's CPU on an uncached personalised request (bench/serve_profile.py).
    items = [_item(item) for item in answer.items]
    # Minted here, after the answer cache: a cached answer is served under a fresh id.
    if assignment is None or assignment.experiment_id is None:  # none, or a promoted configuration
        experiment, recommendation_id = None, recommendation_id_mint()
    else:
        experiment = {"id": assignment.experiment_id, "variant": assignment.variant.name}
        recommendation_id = recommendation_id_mint(**experiment_ref(assignment))
    return Response(
        {
            "items": items,
            "model": answer.model,
            "strategy": answer.strategy,
            "recommendation_id": recommendation_id,
            "experiment": experiment,
        }
    )


def experiment_ref(assignment: Assignment) -> dict[str, Any]:
    return {"experiment_id": assignment.experiment_id, "variant": assignment.variant.name}


def _item(item: Recommendation) -> dict[str, Any]:
    rendered: dict[str, Any] = {"id": item.id, "score": item.score}
    if item.reason is not None:
        rendered["reason"] = item.reason
    return rendered


# gunicorn refuses a request line over 8,190 bytes before the application sees it: long filter=
# or boost= expressions of non-ASCII text can get there once percent-encoded (up to 12 bytes a character).
URL_TOO_LONG = {
    414: OpenApiResponse(ErrorSerializer, description="The URL is over 8,190 bytes (the web server's limit)")
}

COMMON = [LIMIT_PARAMETER, CATEGORY_PARAMETER]


WINDOW_PATTERN = r"^(?:[1-9]|[1-9][0-9]|[12][0-9][0-9]|3[0-5][0-9]|36[0-5])d$"  # 1d to 365d


class UserRecommendationsView(ApiView):
    scopes = {"GET": "read"}

    @extend_schema(
        operation_id="user_recommendations",
        parameters=[
            *COMMON,
            EXCLUDE_PARAMETER,
            boolean_parameter("include_seen", "also recommend items the user has interacted with"),
            boolean_parameter("explain", "add a reason to each item"),
            number_parameter("diversity", minimum=0.0, maximum=1.0, default=0.0, description="0 (pure relevance) to 1"),
            *RULE_PARAMETERS,
        ],
        responses={200: AnswerSerializer, **ERRORS, **URL_TOO_LONG},
    )
    def get(self, request: Request, user_id: str) -> Response:
        assignment = experiment_assign(scenario=query_scenario(request), user_external_id=user_id)
        return render(
            variant_user_recommendations(
                assignment=assignment,
                user_external_id=user_id,
                limit=query_limit(request),
                category=query_category(request),
                exclude=query_ids(request, "exclude"),
                include_seen=query_bool(request, "include_seen"),
                explain=query_bool(request, "explain"),
                diversity=query_float(request, "diversity", default=0.0, minimum=0.0, maximum=1.0),
                rules=query_rules(request),
                scenario=query_scenario(request),
            ),
            assignment,
        )


class ItemSimilarView(ApiView):
    scopes = {"GET": "read"}

    @extend_schema(
        operation_id="item_similar",
        parameters=[
            *COMMON,
            OpenApiParameter(
                "space",
                {"type": "string", "pattern": SPACE_PATTERN, "default": "collaborative"},
                description="collaborative (default), content, hybrid, or the name of a custom space (404 if unknown)",
            ),
            *RULE_PARAMETERS,
            USER_PARAMETER,
        ],
        responses={200: AnswerSerializer, **ERRORS, **URL_TOO_LONG, **NOT_FOUND},
    )
    def get(self, request: Request, item_id: str) -> Response:
        space = query_one(request, "space", "collaborative")
        if not re.fullmatch(SPACE_PATTERN, space):
            raise ValidationFailed(
                "space must be 1-40 of [a-z0-9_], starting with a letter", details={"space": ["invalid"]}
            )
        return render(
            similarity.item_similar_list(
                item_external_id=item_id,
                limit=query_limit(request),
                space=space,
                category=query_category(request),
                rules=query_rules(request, with_user=True),
                scenario=query_scenario(request),
            )
        )


class PopularItemsView(ApiView):
    scopes = {"GET": "read"}
    expensive = staticmethod(lambda request: "window" in request.query_params)  # counted on demand

    @extend_schema(
        operation_id="items_popular",
        description=(
            "Most interacted items in the window. `score` is the item's share, in percent, of all "
            "interaction weight in the window (each event time-decayed, each user's weight on an item "
            "capped at RECSYS_POPULAR_MAX_USER_WEIGHT), so scores compare across windows; shares are of "
            "the whole catalogue's activity, also when `category` filters the list."
        ),
        parameters=[
            *COMMON,
            OpenApiParameter(
                "window",
                {"type": "string", "pattern": WINDOW_PATTERN},
                description="e.g. 30d (1-365 days); default 7d (RECSYS_POPULAR_WINDOW_DAYS)",
            ),
            *RULE_PARAMETERS,
            USER_PARAMETER,
        ],
        responses={200: AnswerSerializer, **ERRORS, **URL_TOO_LONG},
    )
    def get(self, request: Request) -> Response:
        window = query_one(request, "window")
        if window is not None and not re.fullmatch(WINDOW_PATTERN, window):
            raise ValidationFailed("window must look like 7d (1 to 365 days)", details={"window": ["invalid"]})
        return render(
            recommendations.popular_items_list(
                limit=query_limit(request),
                category=query_category(request),
                window_days=int(window[:-1]) if window else None,
                rules=query_rules(request, with_user=True),
                scenario=query_scenario(request),
            )
        )


class SessionRecommendationsView(ApiView):
    scopes = {"POST": "read"}

    @extend_schema(
        operation_id="session_recommendations",
        request=SessionRequestSerializer,
        # The rules may also come as query parameters, as on every GET endpoint (not both ways at once).
        parameters=[*RULE_PARAMETERS, USER_PARAMETER],
        responses={200: AnswerSerializer, **ERRORS, **URL_TOO_LONG},
    )
    def post(self, request: Request) -> Response:
        body = SessionRequestSerializer(data=request.data)
        query_body_fields_refuse(request, set(body.fields) - set(RULE_FIELDS))
        body.is_valid(raise_exception=True)
        data = body.validated_data
        rules, scenario = body_or_query_rules(request, data)
        return render(
            recommendations.session_recommendations_list(
                positives=data["items"],
                negatives=data.get("negative_items", []),
                limit=data["limit"],
                category=data.get("category") or None,
                rules=rules,
                scenario=scenario,
            )
        )


class SearchView(ApiView):
    scopes = {"GET": "read"}
    expensive = True  # api.limits: concurrent ones are limited per key and in total

    @extend_schema(
        operation_id="items_search",
        parameters=[
            OpenApiParameter(
                "q",
                # At least one character that is not white space: a blank query has nothing to match.
                {"type": "string", "maxLength": settings.RECSYS_SEARCH_MAX_QUERY_CHARS, "pattern": r"\S"},
                required=True,
                description=f"the query text, 1 to {settings.RECSYS_SEARCH_MAX_QUERY_CHARS} characters; in keyword and "
                f"hybrid mode at most {settings.RECSYS_SEARCH_MAX_TERMS} distinct words and "
                f'{settings.RECSYS_SEARCH_MAX_OPERATORS} operators (-negation, "phrase", OR), with a word to '
                "look for in each OR branch (400 otherwise). Search is an expensive request: concurrent ones are "
                "limited per key and in total (429 with Retry-After).",
            ),
            OpenApiParameter("mode", {"type": "string", "enum": list(search.MODES), "default": "hybrid"}),
            *COMMON,
            *RULE_PARAMETERS,
            USER_PARAMETER,
        ],
        responses={200: AnswerSerializer, **ERRORS, **URL_TOO_LONG, **CONFLICT},
    )
    def get(self, request: Request) -> Response:
        query, mode = _search_params(request)
        return render(
            search.items_search(
                query=query,
                mode=mode,
                limit=query_limit(request),
                category=query_category(request),
                rules=query_rules(request, with_user=True),
                scenario=query_scenario(request),
            )
        )

    @staticmethod
    def admit(request: Request) -> None:
        """api.limits: a query past the bounds is refused before it takes a slot."""
        query, mode = _search_params(request)
        if mode != "semantic":
            search.keyword_query_parse(query=query)


def _search_params(request: Request) -> tuple[str, str]:
    raw = query_one(request, "q") or ""
    query = raw.replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
    if not query or len(raw) > settings.RECSYS_SEARCH_MAX_QUERY_CHARS:
        raise ValidationFailed(
            f"q must be 1 to {settings.RECSYS_SEARCH_MAX_QUERY_CHARS} characters", details={"q": ["invalid"]}
        )
    mode = query_one(request, "mode", "hybrid")
    if mode not in search.MODES:
        raise ValidationFailed(f"mode must be one of {', '.join(search.MODES)}", details={"mode": ["invalid"]})
    return query, mode


class ItemDuplicatesView(ApiView):
    scopes = {"GET": "read"}
    expensive = True

    @extend_schema(
        operation_id="item_duplicates",
        parameters=[
            number_parameter(
                "threshold", minimum=0.0, maximum=1.0, default=0.95, description="minimum cosine similarity, 0-1"
            ),
            LIMIT_PARAMETER,
            CATEGORY_PARAMETER,
            *RULE_PARAMETERS,
            USER_PARAMETER,
        ],
        responses={200: AnswerSerializer, **ERRORS, **URL_TOO_LONG, **NOT_FOUND, **CONFLICT},
    )
    def get(self, request: Request, item_id: str) -> Response:
        return render(
            similarity.item_duplicates_list(
                item_external_id=item_id,
                threshold=query_float(request, "threshold", default=0.95, minimum=0.0, maximum=1.0),
                limit=query_limit(request),
                category=query_category(request),
                rules=query_rules(request, with_user=True),
                scenario=query_scenario(request),
            )
        )


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 1,
        "maxItems": settings.RECSYS_CUSTOM_VECTOR_MAX_DIMENSIONS,
        "not": {"items": {"enum": [0]}},  # not all zeros: it has no direction
    }
)
class VectorField(serializers.ListField):
    child = serializers.FloatField()


class ItemVectorRequestSerializer(serializers.Serializer):
    vector = VectorField(help_text="The item's embedding in this space; the space's first vector fixes its dimensions.")


class ItemVectorAnswerSerializer(serializers.Serializer):
    item = serializers.CharField()
    space = serializers.CharField()
    dimensions = serializers.IntegerField()


class ItemVectorView(ApiView):
    scopes = {"PUT": "write"}

    @extend_schema(
        operation_id="item_vector_put",
        request=ItemVectorRequestSerializer,
        responses={
            200: ItemVectorAnswerSerializer,
            201: ItemVectorAnswerSerializer,
            **ERRORS,
            **URL_TOO_LONG,
            **NOT_FOUND,
            400: OpenApiResponse(
                ErrorSerializer, description="Invalid vector, or a space that holds vectors of other dimensions"
            ),
            403: OpenApiResponse(
                ErrorSerializer, description="The key lacks write, or the space is new and the key lacks admin"
            ),
            409: OpenApiResponse(ErrorSerializer, description="A new space while RECSYS_MAX_CUSTOM_SPACES exist"),
        },
    )
    def put(self, request: Request, item_id: str, space: str) -> Response:
        body = request.data if isinstance(request.data, dict) else None
        if body is None or set(body) != {"vector"}:
            raise ValidationFailed('send {"vector": [number, ...]}', details={"body": ["invalid"]})
        with transaction.atomic():  # a new space's admission holds its lock until the vector is stored
            may_create = isinstance(request.auth, ApiKey) and request.auth.has_scope("admin")
            custom_space_admit(space=space, may_create=may_create)
            vector_space, created = spaces.item_vector_put(item_external_id=item_id, space=space, vector=body["vector"])
        answer = {"item": item_id, "space": vector_space.name, "dimensions": vector_space.dimensions}
        return Response(answer, status=201 if created else 200)
