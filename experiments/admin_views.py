"""The operators' Experiments pages: the list, and one experiment with its variants' metrics, a CTR
chart over time, and stop, promote and withdraw buttons (staff who may change experiments, CSRF-protected)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from experiments import selectors, services
from experiments.chart import Point, ctr_chart_svg
from experiments.models import Experiment, ExperimentStatus
from recsys.errors import DomainError

CHANGE = "experiments.change_experiment"


def experiments_view(request: HttpRequest) -> HttpResponse:
    experiments = selectors.experiments_list(limit=200)
    context = {**admin.site.each_context(request), "title": "Experiments", "experiments": experiments}
    return render(request, "admin/experiments/list.html", context)


def experiment_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    try:
        experiment = selectors.experiment_get(experiment_id=experiment_id)
    except DomainError as error:
        messages.error(request, error.message)
        return HttpResponseRedirect(reverse("experiments_admin_list"))
    latest = selectors.snapshots_latest(experiment_id=experiment.pk)
    variants = list(experiment.variants.all())
    total_weight = sum(v.weight for v in variants)
    rows = [
        {
            "variant": v,
            "share": v.weight / total_weight,
            "snapshot": latest.get(v.pk),
            "control": v.name == experiment.control,
        }
        for v in variants
    ]
    context = {
        **admin.site.each_context(request),
        "title": f"Experiment {experiment.pk}: {experiment.name}",
        "experiment": experiment,
        "rows": rows,
        "computed_at": max((s.computed_at for s in latest.values()), default=None),
        "method": next((s.statistics.get("method") for s in latest.values() if s.statistics.get("method")), ""),
        "chart": mark_safe(_chart(experiment)),  # noqa: S308 (built by ctr_chart_svg, names escaped there)
        "can_change": request.user.has_perm(CHANGE),
        "running": experiment.status == ExperimentStatus.RUNNING,
        "completed": experiment.status == ExperimentStatus.COMPLETED,
    }
    return render(request, "admin/experiments/detail.html", context)


def _chart(experiment: Experiment) -> str:
    series: dict[str, list[Point]] = {v.name: [] for v in experiment.variants.all()}
    for snapshot in selectors.snapshots_history(experiment_id=experiment.pk):
        stats = snapshot.statistics
        interval = stats.get("ctr_interval") or [None, None]
        if stats.get("ctr") is None or None in interval:
            continue
        series[snapshot.variant.name].append(Point(snapshot.computed_at, stats["ctr"], interval[0], interval[1]))
    return ctr_chart_svg(series)


def _act(request: HttpRequest, experiment_id: int, action: Any, done: str) -> HttpResponse:
    if not request.user.has_perm(CHANGE):
        raise PermissionDenied
    try:
        action()
    except DomainError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, done)
    return HttpResponseRedirect(reverse("experiments_admin_detail", args=[experiment_id]))


@require_POST
def experiment_stop_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    return _act(
        request, experiment_id, lambda: services.experiment_stop(experiment_id=experiment_id), "Experiment stopped."
    )


@require_POST
def experiment_promote_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    if not request.user.has_perm("embeddings.change_modelversion"):
        raise PermissionDenied  # a variant's model version then serves everyone: an activation
    variant = request.POST.get("variant", "")
    return _act(
        request,
        experiment_id,
        lambda: services.experiment_promote(experiment_id=experiment_id, variant=variant),
        f"Variant {variant} promoted: its model version (if it names one) now serves everyone, and its "
        "configuration serves this experiment's placement while no experiment runs there.",
    )


@require_POST
def experiment_withdraw_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    return _act(
        request,
        experiment_id,
        lambda: services.experiment_withdraw(experiment_id=experiment_id),
        "The promoted configuration no longer serves the placement: it is back to the defaults.",
    )


urlpatterns = [
    path("experiments/", admin.site.admin_view(experiments_view), name="experiments_admin_list"),
    path("experiments/<int:experiment_id>/", admin.site.admin_view(experiment_view), name="experiments_admin_detail"),
    path(
        "experiments/<int:experiment_id>/stop/",
        admin.site.admin_view(experiment_stop_view),
        name="experiments_admin_stop",
    ),
    path(
        "experiments/<int:experiment_id>/promote/",
        admin.site.admin_view(experiment_promote_view),
        name="experiments_admin_promote",
    ),
    path(
        "experiments/<int:experiment_id>/withdraw/",
        admin.site.admin_view(experiment_withdraw_view),
        name="experiments_admin_withdraw",
    ),
]
