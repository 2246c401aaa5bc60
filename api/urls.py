"""Routes of /api/v1/; ids may contain '/', so specific routes come before the catch-alls."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api import model_views, views
from api import recommendation_views as rec

v1 = [
    path("items/batch", views.ItemBatchView.as_view(), name="items-batch"),
    path("items/popular", rec.PopularItemsView.as_view(), name="items-popular"),
    path("items/<path:item_id>/similar", rec.ItemSimilarView.as_view(), name="item-similar"),
    path("items/<path:item_id>/duplicates", rec.ItemDuplicatesView.as_view(), name="item-duplicates"),
    path("items/<path:item_id>/vectors/<str:space>", rec.ItemVectorView.as_view(), name="item-vector"),
    path("items/<path:item_id>", views.ItemDetailView.as_view(), name="item-detail"),
    path("users/<path:user_id>/interactions", views.UserInteractionsView.as_view(), name="user-interactions"),
    path("users/<path:user_id>/recommendations", rec.UserRecommendationsView.as_view(), name="user-recommendations"),
    path("users/<path:user_id>", views.UserDetailView.as_view(), name="user-detail"),
    path("interactions", views.InteractionsView.as_view(), name="interactions"),
    path("recommendations", rec.SessionRecommendationsView.as_view(), name="session-recommendations"),
    path("search", rec.SearchView.as_view(), name="search"),
    path("health", views.HealthView.as_view(), name="health"),
    path("models", model_views.ModelListView.as_view(), name="models"),
    path("models/train", model_views.ModelTrainView.as_view(), name="models-train"),
    path("models/<int:version>/activate", model_views.ModelActivateView.as_view(), name="model-activate"),
]

urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^(?P<rest>.*)$", views.not_found, name="not-found"),
]
