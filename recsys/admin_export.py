"""The admin's data set download: the export_data stream as a file, for superusers only."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET

from recsys.dataset_export import dataset_export


@require_GET
def dataset_download_view(request: HttpRequest) -> StreamingHttpResponse:
    """Every user, item, interaction and custom vector: superusers only, as it holds all of them."""
    if not request.user.is_superuser:
        raise PermissionDenied("exporting the data set needs a superuser")
    response = StreamingHttpResponse(dataset_export(), content_type="application/x-ndjson")
    name = f"recsys-{datetime.now(UTC):%Y%m%d-%H%M%S}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


urlpatterns = [
    path("export/", admin.site.admin_view(dataset_download_view), name="recsys_admin_export"),
]
