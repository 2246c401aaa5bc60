"""The models page: every version with its metrics against popularity, training progress, and the
operator's actions (train now, activate, roll back, prune), plus the embedding map."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from embeddings import maps, operations, runs
from embeddings.models import ActiveVersion, EmbeddingMap, Kind, ModelVersion, VectorSpace, VersionArtifacts
from recsys.admin_format import moment, timestamps_humanized
from recsys.admin_guard import GuardedAdmin
from recsys.errors import DomainError

VERSION_FIELDS = (
    "kind",
    "algorithm",
    "status",
    "params_table",
    "dimensions",
    "vector_type",
    "ef_search",
    "metrics_table",
    "ranking_table",
    "timings_table",
    "counts_table",
    "progress_table",
    "error",
    "task_id",
    "has_tables",
    "created_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
)
MAP_FIELDS = ("version", "state", "coloured_by", "sample_size", "error", "requested_at", "computed_at")
# The change page of a record nobody edits: no Save buttons, a Close link instead.
READ_ONLY = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
METRICS_SHOWN = ("ndcg@10", "recall@10", "precision@10", "coverage@10")


def _format_metric(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{value:,.0f}"  # a count among the metrics (users evaluated)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def readable(value: object) -> str:
    """A JSON value as the operator reads it: objects as two-column tables, lists of objects as
    tables with a column per key, numbers with separators, nothing as a dash."""
    if isinstance(value, dict):
        if not value:
            return "—"
        rows = format_html_join(
            "", "<tr><th scope='row'>{}</th><td>{}</td></tr>", ((k, readable(v)) for k, v in value.items())
        )
        return format_html('<table class="recsys-record">{}</table>', rows)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for row in value for k in row))
        head = format_html_join("", "<th>{}</th>", ((c,) for c in columns))
        body = format_html_join(
            "",
            "<tr>{}</tr>",
            ((format_html_join("", "<td>{}</td>", ((readable(row.get(c)),) for c in columns)),) for row in value),
        )
        return format_html('<table class="recsys-record"><tr>{}</tr>{}</table>', head, body)
    if isinstance(value, list):
        return ", ".join(readable(v) for v in value) or "—"
    return _scalar(value)


def _scalar(value: object) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def seconds_table(timings: dict[str, Any]) -> str:
    """Seconds per stage, and their total."""
    if not timings:
        return "—"
    total = sum(v for v in timings.values() if isinstance(v, int | float))
    rows = format_html_join(
        "",
        "<tr><th scope='row'>{}</th><td class='recsys-number'>{} s</td></tr>",
        ((k, f"{v:,.1f}") for k, v in timings.items()),
    )
    return format_html(
        '<table class="recsys-record">{}<tr><th scope="row">total</th><td class="recsys-number">{} s</td></tr></table>',
        rows,
        f"{total:,.1f}",
    )


@admin.register(ModelVersion)
class ModelVersionAdmin(GuardedAdmin):
    list_display = [
        "version_number",
        "kind",
        "algorithm_shown",
        "status",
        "ndcg_against_popularity",
        "progress_shown",
        "duration",
        "created",
    ]
    list_display_links = ["version_number"]
    list_filter = ["kind", "status", "algorithm"]
    search_fields = ["algorithm"]
    search_help_text = "A version number, or an algorithm."
    list_per_page = 50
    actions = ["activate"]
    change_list_template = "admin/embeddings/modelversion/change_list.html"
    change_form_template = "admin/embeddings/modelversion/change_form.html"
    fields = VERSION_FIELDS
    readonly_fields = VERSION_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        # The Gram matrix, encoder state and centroids can be megabytes each: never list them.
        return super().get_queryset(request).defer("item_gram", "encoder_state", "centroids")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from training runs ("Train now")

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # their tables go through "Delete old versions" (a DROP per version)

    @admin.display(description="version", ordering="pk")
    def version_number(self, version: ModelVersion) -> str:
        return f"v{version.pk}"

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ModelVersion], search_term: str
    ) -> tuple[QuerySet[ModelVersion], bool]:
        term = search_term.strip().removeprefix("v")
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="algorithm", ordering="algorithm")
    def algorithm_shown(self, version: ModelVersion) -> str:
        return f"{version.algorithm}, {version.dimensions}-d" if version.dimensions else version.algorithm

    @admin.display(description="NDCG@10 / popularity's")
    def ndcg_against_popularity(self, version: ModelVersion) -> str:
        model, baseline = version.metrics.get("ndcg@10"), version.baseline_metrics.get("ndcg@10")
        if not isinstance(model, int | float):
            return "—"
        return f"{model:.4f} / {baseline:.4f}" if isinstance(baseline, int | float) else f"{model:.4f}"

    @admin.display(description="progress")
    def progress_shown(self, version: ModelVersion) -> str:
        progress = version.progress or {}
        if version.status != "training" or not progress:
            return "queued" if version.status == "training" else ""
        stage = str(progress.get("stage", ""))
        done, left = progress.get("done"), progress.get("left")
        if isinstance(done, int) and isinstance(left, int) and done + left:
            return f"{stage} {done}/{done + left} ({100 * done // (done + left)}%)"
        return stage

    @admin.display(description="created", ordering="created_at")
    def created(self, version: ModelVersion) -> str:
        return moment(version.created_at)

    @admin.display(description="took")
    def duration(self, version: ModelVersion) -> str:
        if version.started_at and version.finished_at:
            return f"{(version.finished_at - version.started_at).total_seconds():.1f} s"
        return ""

    @admin.display(description="parameters")
    def params_table(self, version: ModelVersion) -> str:
        return readable(version.params)

    @admin.display(description="timings")
    def timings_table(self, version: ModelVersion) -> str:
        return seconds_table(version.timings)

    @admin.display(description="trained on")
    def counts_table(self, version: ModelVersion) -> str:
        return readable(version.counts)

    @admin.display(description="progress")
    def progress_table(self, version: ModelVersion) -> str:
        progress = version.progress or {}
        return readable({"stage": progress["stage"], **progress} if "stage" in progress else progress)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # A version is the record of a run: read-only (its actions are the buttons above it).
        context = {"title": "Model version", **(extra_context or {}), **READ_ONLY}
        return super().change_view(request, object_id, form_url, context)

    @admin.display(description="offline metrics (model / popularity on the same split)")
    def metrics_table(self, version: ModelVersion) -> str:
        names = [m for m in METRICS_SHOWN if m in version.metrics] + sorted(set(version.metrics) - set(METRICS_SHOWN))
        if not names:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    name,
                    _format_metric(version.metrics.get(name)),
                    _format_metric(version.baseline_metrics.get(name, "—")),
                )
                for name in names
            ),
        )
        return format_html("<table><tr><th>metric</th><th>model</th><th>popularity</th></tr>{}</table>", rows)

    @admin.display(description="ranking stage (validation users, NDCG@10)")
    def ranking_table(self, version: ModelVersion) -> str:
        """The learned ranker against each single source on the run's validation users, whether it is
        served by default, per-source recall of the held-out items, and its top features."""
        artifacts = VersionArtifacts.objects.filter(version=version).only("version", "ranking", "ranking_used").first()
        report: dict[str, Any] = artifacts.ranking if artifacts is not None else {}
        if not report:
            return "—"
        gain = report.get("gain", 0.0)
        verdict = "served by default" if artifacts and artifacts.ranking_used else "not served by default"
        importances = sorted(report.get("importances", {}).items(), key=lambda kv: -kv[1])[:5]
        depth = report.get("depth", "")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            [
                ("ranked", _format_metric(report["ndcg@10"]), _format_metric(report["recall@depth"].get("union"))),
                *(
                    (name, _format_metric(value), _format_metric(report["recall@depth"].get(name)))
                    for name, value in sorted(report.get("sources_ndcg@10", {}).items(), key=lambda kv: -kv[1])
                ),
            ],
        )
        return format_html(
            "<p>{} vs the best source ({}): {}, {}; {} users, {} candidates each.</p>"
            "<table><tr><th>ranking</th><th>NDCG@10</th><th>recall@{} (union for ranked)</th></tr>{}</table>"
            "<p>Top features by gain: {}</p>",
            _format_metric(report["ndcg@10"]),
            report.get("best_source", "—"),
            f"{gain:+.1%}",
            verdict,
            report.get("users", 0),
            report.get("candidates_per_user", 0),
            depth,
            rows,
            ", ".join(f"{name} {share:.0%}" for name, share in importances) or "—",
        )

    # permissions: Django offers an action to anyone who may see the list; activating needs change
    @admin.action(description="Activate the selected version (serve it now)", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        self._activate(request, queryset.get().pk)

    def _activate(self, request: HttpRequest, version_id: int) -> None:
        try:
            version = runs.model_version_activate(version_id=version_id)
        except DomainError as error:
            self.message_user(request, f"Not activated: {timestamps_humanized(error.message)}", messages.ERROR)
            return
        self.message_user(request, f"Serving {version.kind} version {version.pk} now.", messages.SUCCESS)

    # ---- extra pages and actions ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("train/", wrap(require_POST(self.train_view)), name="embeddings_modelversion_train"),
            path("rollback/", wrap(require_POST(self.rollback_view)), name="embeddings_modelversion_rollback"),
            path("prune/", wrap(require_POST(self.prune_view)), name="embeddings_modelversion_prune"),
            path(
                "<int:version_id>/activate/",
                wrap(require_POST(self.activate_view)),
                name="embeddings_modelversion_activate",
            ),
            path("map/", wrap(self.map_view), name="embeddings_modelversion_map"),
            path(
                "map/<int:version_id>/compute/",
                wrap(require_POST(self.map_compute_view)),
                name="embeddings_modelversion_map_compute",
            ),
            path(
                "map/<int:version_id>/points.json",
                wrap(self.map_points_view),
                name="embeddings_modelversion_map_points",
            ),
            *super().get_urls(),
        ]

    def _changelist(self) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:embeddings_modelversion_changelist"))

    def _require_change(self, request: HttpRequest) -> None:
        if not self.has_change_permission(request):
            raise PermissionDenied

    def _kind(self, request: HttpRequest) -> str:
        kind = request.POST.get("kind", "")
        if kind not in Kind.values:
            raise Http404(f"unknown kind {kind!r}")
        return kind

    def train_view(self, request: HttpRequest) -> HttpResponse:
        self._require_change(request)
        kind = self._kind(request)
        try:
            version = operations.training_start(kind=kind)
        except DomainError as error:  # TrainingAlreadyRunning (409), ServiceUnavailable (503)
            self.message_user(
                request,
                f"{kind.capitalize()} training not started: {timestamps_humanized(error.message)}",
                messages.ERROR,
            )
        else:
            self.message_user(
                request,
                f"{kind.capitalize()} training started: version {version.pk} ({version.status}).",
                messages.SUCCESS,
            )
        return self._changelist()

    def activate_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        self._require_change(request)
        self._activate(request, version_id)
        return self._changelist()

    def rollback_view(self, request: HttpRequest) -> HttpResponse:
        self._require_change(request)
        kind = self._kind(request)
        try:
            version = operations.model_version_rollback(kind=kind)
        except DomainError as error:
            self.message_user(request, f"Not rolled back: {timestamps_humanized(error.message)}", messages.ERROR)
        else:
            self.message_user(request, f"Rolled back: serving {kind} version {version.pk}.", messages.SUCCESS)
        return self._changelist()

    def prune_view(self, request: HttpRequest) -> HttpResponse:
        self._require_change(request)
        kind = self._kind(request)
        try:
            keep = int(request.POST.get("keep", ""))
        except ValueError:
            keep = 0
        if keep < 1:
            self.message_user(request, "Keep at least one version.", messages.ERROR)
            return self._changelist()
        pruned = runs.model_versions_prune(kind=kind, keep=keep)
        shown = ", ".join(f"v{pk}" for pk in pruned) or "none"
        message = f"Dropped the vectors of {len(pruned)} {kind} version(s): {shown}."
        waiting = operations.versions_in_grace(kind=kind, keep=keep)
        if waiting:
            message += (
                f" Kept for now: {', '.join(f'v{pk}' for pk in waiting)}, which served less than "
                f"{settings.RECSYS_PRUNE_GRACE_SECONDS} s ago (other processes may still read them); "
                f"the beat drops them after that if they are past the newest {settings.RECSYS_KEEP_VERSIONS} "
                "(RECSYS_KEEP_VERSIONS); prune again then to keep fewer."
            )
        self.message_user(request, message)
        return self._changelist()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = {
            **(extra_context or {}),
            "ndcg_chart": operations.ndcg_history(),
            "kinds": Kind.values,
            "rollback_targets": {kind: operations.rollback_target(kind=kind) for kind in Kind.values},
            "active_versions": operations.active_pointers(),
            "training": operations.versions_training(),
        }
        return super().changelist_view(request, context)

    # ---- the embedding map ---------------------------------------------------------------------

    def map_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied("the embedding map needs the permission to view model versions")
        versions = maps.mappable_versions()
        chosen = self._chosen_version(request, versions)
        emap = maps.embedding_map_get(version_id=chosen.pk) if chosen else None
        context = {
            **self.admin_site.each_context(request),
            "title": "Embedding map",
            "opts": self.model._meta,
            "versions": versions,
            "chosen": chosen,
            "emap": emap,
            "item_url_template": reverse("admin:recsys_item_change", args=[0]).replace("/0/", "/{id}/"),
        }
        return render(request, "admin/embeddings/modelversion/map.html", context)

    def _chosen_version(self, request: HttpRequest, versions: list[ModelVersion]) -> ModelVersion | None:
        """?version=N, else the active collaborative version, else the newest mappable one."""
        by_id = {v.pk: v for v in versions}
        asked = request.GET.get("version", "")
        if asked.isascii() and asked.isdigit() and int(asked) in by_id:  # "²".isdigit() too
            return by_id[int(asked)]
        active = [v for v in versions if v.status == "active"]
        preferred = [v for v in active if v.kind == Kind.COLLABORATIVE] + active + versions
        return preferred[0] if preferred else None

    def map_compute_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        self._require_change(request)
        try:
            maps.embedding_map_request(version_id=version_id)
        except DomainError as error:
            self.message_user(request, f"Map not computed: {timestamps_humanized(error.message)}", messages.ERROR)
        else:
            self.message_user(request, f"Computing the map of version {version_id} on a worker.")
        return HttpResponseRedirect(reverse("admin:embeddings_modelversion_map") + f"?version={version_id}")

    def map_points_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        points = maps.embedding_map_points_get(version_id=version_id)
        if not points:
            raise Http404("no map computed for this version yet")
        return JsonResponse(points)


@admin.register(ActiveVersion)
class ActiveVersionAdmin(GuardedAdmin):
    """Read-only: serving switches through "Activate" and "Roll back" on the models page."""

    list_display = ["kind", "version", "activated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(VectorSpace)
class VectorSpaceAdmin(GuardedAdmin):
    list_display = ["name", "dimensions", "created_at"]
    readonly_fields = ["name", "dimensions", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # spaces are created by the first vector sent to them

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the first vector fixed its dimensions; its name is its table's

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # deleting the row would leave its vector table behind


@admin.register(EmbeddingMap)
class EmbeddingMapAdmin(GuardedAdmin):
    list_display = ["version", "state", "coloured_by", "sample_size", "requested_at", "computed_at"]
    fields = MAP_FIELDS
    readonly_fields = MAP_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[EmbeddingMap]:
        return super().get_queryset(request).defer("points").select_related("version")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # computed by a worker; "Recompute" on the map page replaces it
