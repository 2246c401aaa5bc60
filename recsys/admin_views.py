"""Operator pages beside the model admin: the dashboard, a recommendations preview for any user,
and the panels of the item and user pages, all read through the same selectors as the API."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.timezone import localtime

from embeddings.maps import cluster_names_get
from embeddings.operations import model_versions_by_id
from embeddings.recommendations import Answer, user_recommendations_list
from embeddings.selectors import item_vectors_status
from embeddings.similarity import item_similar_list
from experiments.selectors import model_version_ctr
from recsys.admin_selectors import items_by_external_id, user_id_get, user_recent_interactions
from recsys.dashboard import dashboard_report
from recsys.errors import DomainError
from recsys.models import Item, User
from recsys.validation import BUILT_IN_SPACES

logger = logging.getLogger(__name__)
PANEL_LIMIT = 10
COUNTED = (("users", "user"), ("items", "item"), ("interactions", "interaction"))


@dataclass
class Listed:
    """One recommended item as a row: its id, a link to its admin page, its title and why."""

    id: str
    score: float
    url: str | None = None
    title: str = ""
    because: list[Listed] = field(default_factory=list)


@dataclass
class Panel:
    """An answer of a selector, or the error it raised, as the admin shows it."""

    title: str
    strategy: str = ""
    model: dict[str, Any] | None = None
    items: list[Listed] = field(default_factory=list)
    error: str = ""


def item_url(pk: int) -> str:
    return reverse("admin:recsys_item_change", args=[pk])


def _rows(answer: Answer) -> list[Listed]:
    """The answer's items (and the past items given as reasons) with links, in one lookup."""
    because = [b for item in answer.items for b in (item.reason or {}).get("because", [])]
    known = items_by_external_id(external_ids=[i.id for i in answer.items] + [b["id"] for b in because])

    def listed(external_id: str, score: float) -> Listed:
        pk, title = known.get(external_id, (None, ""))
        return Listed(external_id, score, item_url(pk) if pk else None, title)

    rows = []
    for item in answer.items:
        row = listed(item.id, item.score)
        row.because = [listed(b["id"], b["contribution"]) for b in (item.reason or {}).get("because", [])]
        rows.append(row)
    return rows


def _panel(title: str, compute: Any) -> Panel:
    try:
        answer: Answer = compute()
    except DomainError as error:
        return Panel(title, error=error.message)
    except Exception as error:  # a broken panel must not take the whole page down
        logger.exception("admin panel %r failed", title)
        return Panel(title, error=f"{type(error).__name__}: {error}")
    return Panel(title, answer.strategy, answer.model, _rows(answer))


def item_panels(item: Item) -> dict[str, Any]:
    """The item page's extras: its vectors per space, and similar items in each built-in space."""
    status = item_vectors_status(item_id=item.pk)
    versions = model_versions_by_id(ids=[s["version"] for s in status.values() if s["version"]])
    names = cluster_names_get(version_id=status["content"]["version"]) if "cluster" in status.get("content", {}) else {}
    vectors = [
        {
            "space": space,
            "version": versions.get(s["version"]),
            "updated_at": s["updated_at"],
            "cluster": s.get("cluster"),
            "cluster_name": names.get(s["cluster"], "") if "cluster" in s else "",
        }
        for space, s in sorted(status.items())
    ]
    similar = [
        _panel(
            space,
            lambda space=space: item_similar_list(item_external_id=item.external_id, limit=PANEL_LIMIT, space=space),
        )
        for space in BUILT_IN_SPACES
    ]
    return {"vectors": vectors, "similar_panels": similar}


def recommendations_panel(*, user_external_id: str, limit: int = PANEL_LIMIT, category: str | None = None) -> Panel:
    return _panel(
        "recommendations",
        lambda: user_recommendations_list(
            user_external_id=user_external_id, limit=limit, category=category or None, explain=True
        ),
    )


def user_panels(user: User) -> dict[str, Any]:
    return {
        "recent_interactions": user_recent_interactions(user_id=user.pk),
        "recommendations": recommendations_panel(user_external_id=user.external_id),
        "preview_url": reverse("recsys_admin_preview") + f"?user={user.external_id}",
    }


def dashboard_view(request: HttpRequest) -> HttpResponse:
    report = dashboard_report()
    activity = report.activity
    chart = {
        "labels": [localtime(hour).strftime("%d %H:00") for hour in activity.hours],
        "series": [
            {"name": "by event time", "values": activity.by_event, "type": "bar"},
            {"name": "by arrival time", "values": activity.by_arrival, "type": "line", "axis": 1},
        ],
    }
    counts = [(name, reverse(f"admin:recsys_{model}_changelist"), report.counts[name]) for name, model in COUNTED]
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "report": report,
        "counts": counts,
        "activity_chart": chart,
        "version_ctr": model_version_ctr(),
    }
    return render(request, "admin/recsys/dashboard.html", context)


class PreviewForm(forms.Form):
    user = forms.CharField(max_length=128, label="User id", help_text="Any id: unknown users get the cold answer.")
    limit = forms.IntegerField(min_value=1, max_value=200, initial=PANEL_LIMIT)
    category = forms.CharField(max_length=128, required=False)


def preview_view(request: HttpRequest) -> HttpResponse:
    """Recommendations for any user id, as the API would answer them (with the reasons: the user's
    own items), so only for staff who may view users, as the user's page is."""
    if not request.user.has_perm("recsys.view_user"):
        raise PermissionDenied("the preview needs the permission to view users")
    form = PreviewForm(request.GET or None)
    panel, user_pk = None, None
    if form.is_valid():  # an id that is not one (NUL, too long) is the form's error, never looked up
        data = form.cleaned_data
        panel = recommendations_panel(user_external_id=data["user"], limit=data["limit"], category=data["category"])
        user_pk = user_id_get(external_id=data["user"])
    context = {
        **admin.site.each_context(request),
        "title": "Preview recommendations",
        "form": form,
        "panel": panel,
        "user_url": reverse("admin:recsys_user_change", args=[user_pk]) if user_pk else None,
    }
    return render(request, "admin/recsys/preview.html", context)


urlpatterns = [
    path("dashboard/", admin.site.admin_view(dashboard_view), name="recsys_admin_dashboard"),
    path("preview/", admin.site.admin_view(preview_view), name="recsys_admin_preview"),
]
