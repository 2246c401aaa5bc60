"""Routes of /api/v1/; ids may contain '/', so specific routes come before the catch-alls."""

from __future__ import annotations

from django.urls import include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api import experiment_views as exp
from api import model_views, rules_views, views
from api import recommendation_views as rec


class IdConverter:
    """Like ``path`` but also matching line breaks, so that every malformed id reaches the view and
    is refused with 400 validation_error rather than falling through to a 404."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(IdConverter, "id")

v1 = [
    # The hot reads first: each pattern ends in its own literal suffix, so none of the routes below
    # can match their paths (or they theirs), and resolving tries ~10 patterns fewer.
    path("users/<id:user_id>/recommendations", rec.UserRecommendationsView.as_view(), name="user-recommendations"),
    path("items/<id:item_id>/similar", rec.ItemSimilarView.as_view(), name="item-similar"),
    path("items/batch", views.ItemBatchView.as_view(), name="items-batch"),
    path("items/popular", rec.PopularItemsView.as_view(), name="items-popular"),
    path("items/<id:item_id>/duplicates", rec.ItemDuplicatesView.as_view(), name="item-duplicates"),
    path("items/<id:item_id>/vectors/<str:space>", rec.ItemVectorView.as_view(), name="item-vector"),
    path("items/<id:item_id>", views.ItemDetailView.as_view(), name="item-detail"),
    path("users/<id:user_id>/interactions", views.UserInteractionsView.as_view(), name="user-interactions"),
    path("users/<id:user_id>/hidden", rules_views.UserHiddenView.as_view(), name="user-hidden"),
    path("users/<id:user_id>", views.UserDetailView.as_view(), name="user-detail"),
    path("interactions", views.InteractionsView.as_view(), name="interactions"),
    path("impressions", views.ImpressionsView.as_view(), name="impressions"),
    path("recommendations", rec.SessionRecommendationsView.as_view(), name="session-recommendations"),
    path("search", rec.SearchView.as_view(), name="search"),
    path("health", views.HealthView.as_view(), name="health"),
    path("scenarios", rules_views.ScenarioListView.as_view(), name="scenarios"),
    path("scenarios/<str:name>", rules_views.ScenarioDetailView.as_view(), name="scenario-detail"),
    path("models", model_views.ModelListView.as_view(), name="models"),
    path("models/train", model_views.ModelTrainView.as_view(), name="models-train"),
    path("models/<int:version>/activate", model_views.ModelActivateView.as_view(), name="model-activate"),
    path("experiments", exp.ExperimentListView.as_view(), name="experiments"),
    path("experiments/<int:experiment_id>", exp.ExperimentDetailView.as_view(), name="experiment-detail"),
    path("experiments/<int:experiment_id>/stop", exp.ExperimentStopView.as_view(), name="experiment-stop"),
    path("experiments/<int:experiment_id>/promote", exp.ExperimentPromoteView.as_view(), name="experiment-promote"),
    path("experiments/<int:experiment_id>/withdraw", exp.ExperimentWithdrawView.as_view(), name="experiment-withdraw"),
]

urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^(?P<rest>.*)$", views.not_found, name="not-found"),
]
