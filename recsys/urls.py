"""Root URLs: the REST API under /api/, the operators' admin under /admin/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from api.middleware import api_error_view
from experiments import admin_views as experiments_admin_views
from recsys import admin_export, admin_views

urlpatterns = [
    path("api/", include("api.urls")),  # first: every API request resolves past one pattern less
    path("", RedirectView.as_view(url="/api/docs/", permanent=False)),
    path("admin/", include(admin_views.urlpatterns)),  # the dashboard and the preview, staff only
    path("admin/", include(admin_export.urlpatterns)),  # the data set download, superusers only
    path("admin/", include(experiments_admin_views.urlpatterns)),  # experiments: staff; stop/promote: change perm
    path("admin/", admin.site.urls),
]

handler400 = api_error_view(400, "bad_request", "the request could not be understood")
handler403 = api_error_view(403, "permission_denied", "forbidden")
handler404 = api_error_view(404, "not_found", "not found")
handler500 = api_error_view(500, "internal_error", "an unexpected error occurred; it has been logged")
