"""The operator admin of the core data: lists that stay fast at millions of rows, item and user pages
that show what serving does with them, and the site's index (linking the dashboard, models and map)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import OperationalError, connection, transaction
from django.db.models import DateTimeField, Func, ProtectedError, Q, QuerySet
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.utils.text import Truncator

from recsys import admin_views
from recsys.admin_format import moment
from recsys.admin_guard import GuardedAdmin
from recsys.admin_selectors import EXACT_COUNT_BELOW, event_types_in_use, item_categories, table_row_count
from recsys.api_keys import api_key_create, api_key_revoke
from recsys.db import lock_not_available, query_canceled
from recsys.errors import ValidationFailed
from recsys.ingestion.writer import references_delete_begin
from recsys.models import ApiKey, EventType, HiddenItem, Interaction, Item, Scenario, User
from recsys.rules.scenarios import (
    SCENARIO_NAME_PATTERN,
    SCENARIO_NAME_RE,
    scenario_cache_forget,
    scenario_fields_clean,
)
from recsys.signals import item_deleted, items_stored, user_deleted, user_rules_changed
from recsys.validation import clean_attributes

admin.site.site_header = "recsys operator admin"
admin.site.site_title = "recsys admin"
admin.site.index_template = "admin/recsys/index.html"

# OFFSET reads every row before the page and drops it: page 200 of 50 rows reads 10,000, the last page
# of a 100M-row estimate would read them all. Past this page, search or filter instead.
MAX_PAGES = 200


def admin_timeout_ms() -> int:
    return int(settings.RECSYS_ADMIN_STATEMENT_TIMEOUT_MS)


@contextmanager
def admin_statement_timeout() -> Iterator[None]:
    """Cut each statement of the block after ``admin_timeout_ms()`` (0: never): a sort or a filter no
    index serves must not hold a web worker and a PostgreSQL backend for minutes. Set for the block's
    own transaction (a savepoint in a caller's) and set back to what it was when the block ends: the
    connection is persistent, and a SET LOCAL lasts to the end of an enclosing transaction (a block
    that fails rolls back, its setting with it). A cut statement raises OperationalError (query_canceled)."""
    milliseconds = admin_timeout_ms()
    if milliseconds <= 0:
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        before = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{milliseconds}ms"])
        yield
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [before])


def timed_out(error: OperationalError) -> str:
    """What a statement cut by ``admin_statement_timeout`` means, for a message; re-raises other errors."""
    if not query_canceled(error):
        raise error
    return f"cut after {admin_timeout_ms() / 1000:g} s"


class EstimatedCountPaginator(Paginator):
    """Never COUNT(*) a big table: an unfiltered list takes the planner's row estimate, a filtered
    one counts at most EXACT_COUNT_BELOW matches (so its last pages may be out of reach). No page
    past MAX_PAGES: neither linked nor read (Django refuses it as a page past the end)."""

    @cached_property
    def num_pages(self) -> int:
        return min(super().num_pages, MAX_PAGES)

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        if not queryset.query.where:
            return table_row_count(table=queryset.model._meta.db_table).value
        return queryset.order_by()[:EXACT_COUNT_BELOW].count()  # unordered: any matches will do


class LargeTableChangeList(ChangeList):
    """Reads the count and the page's rows under the admin's statement timeout (a cut read is Django's
    answer to a bad lookup: the plain list, fast by id and the estimate, with why), and sorts only by
    the columns of ``sortable_by`` (Django links only those, but applies ``?o=`` to any column)."""

    def get_ordering_field(self, field_name: Any) -> Any:
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None  # as Django treats a column it cannot sort by: ignored
        return super().get_ordering_field(field_name)

    def get_results(self, request: HttpRequest) -> None:
        try:
            with admin_statement_timeout():
                super().get_results(request)
                len(self.result_list)  # the page's rows, cached on the queryset
        except OperationalError as error:
            messages.error(
                request, f"Reading the list was {timed_out(error)}, so it is shown unfiltered: search or filter it."
            )
            raise IncorrectLookupParameters(str(error)) from error
        except IncorrectLookupParameters:
            if self.page_num > MAX_PAGES:
                messages.warning(request, f"Only the first {MAX_PAGES} pages are shown: search or filter instead.")
            raise


class LargeTableAdmin(GuardedAdmin):
    """Tables that reach millions of rows: estimated counts, searches that use an index, no far pages,
    and reads cut after RECSYS_ADMIN_STATEMENT_TIMEOUT_MS with a message."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # "?_facets" would count the whole table once per filter choice
    list_per_page = 50
    paginator = EstimatedCountPaginator

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LargeTableChangeList

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Django's "=field" search is iexact (UPPER(...) = UPPER(...)): no index serves it.
        term = search_term.strip()
        return (queryset.filter(self.search_condition(term)) if term else queryset), False

    def search_condition(self, term: str) -> Q:
        return Q(external_id=term)


def recent_filter(field: str, title: str) -> type[admin.SimpleListFilter]:
    """A list filter on ``field`` by age: last hour, day, week, month."""
    windows = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}

    class RecentFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
            return [("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days")]

        def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
            window = windows.get(self.value() or "")
            return queryset.filter(**{f"{field}__gte": timezone.now() - window}) if window else queryset

    RecentFilter.title = title
    return RecentFilter


class CategoryFilter(admin.SimpleListFilter):
    """The most common categories (cached); ``?category=name`` works for any other one."""

    title = "category"
    parameter_name = "category"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        names = item_categories()
        chosen = self.value()
        return [(name, name) for name in ([*names, chosen] if chosen and chosen not in names else names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        # categories @> ARRAY[name]: the GIN index on categories answers it.
        return queryset.filter(categories__contains=[self.value()]) if self.value() else queryset


class EventTypeFilter(admin.SimpleListFilter):
    """Choices from the event types table: list_filter on the column would SELECT DISTINCT over
    every interaction. No index leads with event_type: with a user, an item or a received window the
    filter applies to their rows; alone, a rare type's count and page read every partition, and the
    admin's statement timeout cuts them."""

    title = "type"
    parameter_name = "event_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in EventType.objects.values_list("name", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(event_type=self.value()) if self.value() else queryset


class ReferencedRowsAdmin(LargeTableAdmin):
    """Users and items, deleted as the API deletes them: interactions refer to them without foreign keys
    (recsys migration 0009), so a delete first waits for the events transactions in flight instead of
    deadlocking with one over the related rows Django deletes first; then it waits at most
    ``RECSYS_DELETE_LOCK_TIMEOUT_SECONDS`` for other locks (a year's roll-up), so it never holds every
    ingest batch behind it, and says "retry shortly" instead; afterwards the deletion is announced
    (``deleted_signal``), so cached answers naming the user or item go too."""

    deleted_signal: Signal
    REORGANISING = "Not deleted: the data is being reorganised (a partition roll-up). Retry in a minute."

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        """What the confirmation page lists: the users or items themselves. Django's own collects every
        related row into memory to list it (every event and impression of a popular item: the page
        never rendered and its delete timed out); their events, impressions, hidden items and vectors
        go with them, as through the API (the page says so)."""
        chosen = [f"{obj}: with its interactions, impressions, hidden items and vectors" for obj in objs]
        perms_needed = set() if self.has_delete_permission(request) else {str(self.model._meta.verbose_name)}
        return chosen, {str(self.model._meta.verbose_name_plural): len(chosen)}, perms_needed, []

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            references_delete_begin()
            super().delete_model(request, obj)
        self.deleted_signal.send(sender=self.model, external_id=obj.external_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            references_delete_begin()
            external_ids = list(queryset.values_list("external_id", flat=True))
            super().delete_queryset(request, queryset)
        for external_id in external_ids:
            self.deleted_signal.send(sender=self.model, external_id=external_id)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except OperationalError as error:
            return self._retry_later(request, error)

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        try:
            return super().response_action(request, queryset, *args, **kwargs)
        except OperationalError as error:
            return self._retry_later(request, error)

    def _retry_later(self, request: HttpRequest, error: OperationalError) -> HttpResponse:
        if not lock_not_available(error):
            raise error
        self.message_user(request, self.REORGANISING, messages.ERROR)
        return HttpResponseRedirect(request.get_full_path())


@admin.register(User)
class UserAdmin(ReferencedRowsAdmin):
    deleted_signal = user_deleted
    list_display = ["external_id", "created_at", "updated_at"]
    list_filter = [recent_filter("created_at", "created")]
    search_fields = ["external_id"]
    search_help_text = "The user's id, exactly."
    readonly_fields = ["created_at", "updated_at"]
    change_form_template = "admin/recsys/user/change_form.html"

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        user = self.get_object(request, object_id)
        if user is not None:
            extra_context = {**(extra_context or {}), **admin_views.user_panels(user)}
        return super().change_view(request, object_id, form_url, extra_context)


class ItemForm(forms.ModelForm):
    """The API's checks of the attributes: NUL characters, which jsonb cannot hold, dropped as the API
    drops them (a 500 before), and a size or numbers past what it takes are a form error. (Django's
    own fields already refuse a NUL in the title or the text.)"""

    class Meta:
        model = Item
        fields = [
            "external_id",
            "title",
            "text",
            "categories",
            "attributes",
            "is_hidden",
            "is_stub",
            "published_at",
            "available_from",
            "available_until",
        ]

    def clean_attributes(self) -> dict[str, Any]:
        try:
            return clean_attributes(self.cleaned_data.get("attributes") or {})
        except ValidationFailed as error:
            raise forms.ValidationError(error.message) from None


@admin.register(Item)
class ItemAdmin(ReferencedRowsAdmin):
    form = ItemForm
    deleted_signal = item_deleted
    list_display = ["external_id", "title", "first_categories", "is_hidden", "is_stub", "updated_at"]
    list_filter = [CategoryFilter, "is_hidden", "is_stub", recent_filter("updated_at", "updated")]
    search_fields = ["external_id", "title"]
    search_help_text = "An item's id exactly, or words of its title and text (full-text search)."
    exclude = ["search_vector"]
    readonly_fields = ["created_at", "updated_at", "content_changed_at"]
    change_form_template = "admin/recsys/item/change_form.html"

    def save_model(self, request: HttpRequest, obj: Item, form: Any, change: bool) -> None:
        """As the API's upsert: the encoder's text changed moves ``content_changed_at`` (re-encoded),
        and the change is announced once it commits (cached answers and popular rankings go stale: a
        hidden flag or categories an operator set here were served for up to 5 minutes)."""
        moved = not change or bool({"title", "text", "categories"} & set(form.changed_data))
        if moved:  # the database's clock, as every other writer of it (the encoder compares them)
            obj.content_changed_at = Func(function="clock_timestamp", output_field=DateTimeField())
        obj.is_stub = obj.is_stub and not change
        super().save_model(request, obj, form, change)
        if moved:
            obj.refresh_from_db(fields=["content_changed_at"])
        items_stored.send(
            sender=Item,
            created=set() if change else {obj.external_id},
            changed={obj.external_id} if change else set(),
        )

    def search_condition(self, term: str) -> Q:
        # The generated search_vector column and its GIN index, as the keyword search API uses.
        from django.contrib.postgres.search import SearchQuery

        return Q(external_id=term) | Q(search_vector=SearchQuery(term, config="english", search_type="websearch"))

    @admin.display(description="categories")
    def first_categories(self, item: Item) -> str:
        shown = ", ".join(item.categories[:3])
        return shown + (" …" if len(item.categories) > 3 else "")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Item]:
        return super().get_queryset(request).defer("search_vector", "text")

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        item = self.get_object(request, object_id)
        if item is not None:
            extra_context = {**(extra_context or {}), **admin_views.item_panels(item)}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Interaction)
class InteractionAdmin(LargeTableAdmin):
    """Newest first by id; ``?user=<pk>`` or ``?item=<pk>`` (the user's and item's pages link them) lists
    one user's or item's events, newest first by event time."""

    list_display = ["happened", "user", "event_type", "item_shown", "value", "weight", "received"]
    # By arrival: created_at has a BRIN index; event time has none of its own (a date hierarchy
    # on it would scan every interaction for its years and months).
    list_filter = [EventTypeFilter, recent_filter("created_at", "received")]
    list_select_related = ["user", "item"]
    raw_id_fields = ["user", "item"]
    search_fields = ["user__external_id", "item__external_id"]
    search_help_text = "A user's or an item's id, exactly."

    @staticmethod
    def of_one_user_or_item(request: HttpRequest) -> bool:
        return "user" in request.GET or "item" in request.GET

    def get_sortable_by(self, request: HttpRequest) -> tuple[str, ...]:
        """Only what an index reads in order, across every partition (the DEFAULT one keeps PostgreSQL
        from appending them in order of time): ids through each partition's primary key (id, timestamp),
        and one user's or item's event times through (user, timestamp, id) and (item, timestamp). Type,
        value, weight, created_at (BRIN) and the whole table's event times each sorted every partition."""
        return ("happened", "received") if self.of_one_user_or_item(request) else ("received",)

    def get_ordering(self, request: HttpRequest) -> tuple[str, ...]:
        # As the indexes hold them, and named so that the header marks the column sorted by.
        return ("-timestamp", "-id") if self.of_one_user_or_item(request) else ("-id",)

    def search_condition(self, term: str) -> Q:
        # Resolved to ids first, so each side uses its (user, ...) or (item, ...) index.
        return Q(user_id__in=User.objects.filter(external_id=term).values("pk")) | Q(
            item_id__in=Item.objects.filter(external_id=term).values("pk")
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Interaction]:
        return super().get_queryset(request).defer("item__text", "item__search_vector")

    @admin.display(description="when", ordering="timestamp")
    def happened(self, interaction: Interaction) -> str:
        return moment(interaction.timestamp)

    # Sorted by id: ids are drawn as rows arrive, so they follow created_at (a BRIN index: no order).
    @admin.display(description="received", ordering="id")
    def received(self, interaction: Interaction) -> str:
        return moment(interaction.created_at)

    @admin.display(description="item")
    def item_shown(self, interaction: Interaction) -> str:
        # The id and the start of the title: a long title pushed the other columns out of sight.
        item = interaction.item
        return f"{item.external_id} · {Truncator(item.title).chars(40)}" if item.title else item.external_id


@admin.register(EventType)
class EventTypeAdmin(GuardedAdmin):
    list_display = ["name", "weight", "uses_value", "counts_as_click", "description"]
    list_editable = ["weight", "uses_value", "counts_as_click"]

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """Django's list, with the chosen types that interactions still have as "protected": the page
        names them and Django deletes none of the selection. Its own check cannot see them (interactions
        name their type without a foreign key): EventType.delete raised ProtectedError, a 500, and a
        bulk delete had committed the types before it. No index leads with event_type, so a type in use
        is found at its first row but an unused one reads every interaction: bounded by the admin's
        statement timeout, past which nothing is deleted."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        try:
            with admin_statement_timeout():
                in_use = event_types_in_use(names=[event_type.name for event_type in objs])
        except OperationalError as error:
            unchecked = f"interactions of these types (the check was {timed_out(error)})"
            return deleted, counts, perms_needed, [*protected, unchecked]
        refused = [f"interactions of type {name} (change its weight instead)" for name in in_use]
        return deleted, counts, perms_needed, [*protected, *refused]

    def delete_model(self, request: HttpRequest, obj: EventType) -> None:
        with admin_statement_timeout():  # EventType.delete checks again, now in the deleting transaction
            obj.delete()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[EventType]) -> None:
        with admin_statement_timeout():  # one transaction: a type put to use meanwhile keeps them all
            for event_type in queryset:  # one by one: EventType.delete refuses types still in use
                event_type.delete()

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except (ProtectedError, OperationalError) as error:
            return self._not_deleted(request, error)

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        try:
            with transaction.atomic():  # the log entries Django writes first go with the deletes
                return super().response_action(request, queryset, *args, **kwargs)
        except (ProtectedError, OperationalError) as error:
            return self._not_deleted(request, error)

    def _not_deleted(self, request: HttpRequest, error: ProtectedError | OperationalError) -> HttpResponse:
        """A type put to use between the confirmation and the delete, or a check cut by the timeout."""
        reason = error.args[0] if isinstance(error, ProtectedError) else f"the check was {timed_out(error)}"
        self.message_user(request, f"Nothing was deleted: {reason}.", messages.ERROR)
        return HttpResponseRedirect(request.get_full_path())


@admin.register(ApiKey)
class ApiKeyAdmin(GuardedAdmin):
    list_display = ["name", "prefix", "scopes", "rate_limit", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    fields = ["name", "scopes", "rate_limit", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if change:  # new scopes or rate: every web process looks the key up again (post_save)
            super().save_model(request, obj, form, change)
            return
        key, raw_key = api_key_create(name=obj.name, scopes=list(obj.scopes), rate_limit=obj.rate_limit)
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        messages.warning(request, f"API key created. Copy it now, it is not shown again: {raw_key}")

    @admin.action(description="Revoke the selected keys (refused from the next request)", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


class ScenarioForm(forms.ModelForm):
    """The API's checks, once: every expression parses, boosts, pins and buries have their shape."""

    class Meta:
        model = Scenario
        fields = ["name", "filter", "boosts", "pins", "buries"]

    def clean_name(self) -> str:
        name = str(self.cleaned_data.get("name") or "")
        if not SCENARIO_NAME_RE.fullmatch(name):  # as the API's PUT: a name it can serve, read and delete
            raise forms.ValidationError(
                f"1-64 characters of {SCENARIO_NAME_PATTERN}: lowercase letters, digits, - and _"
            )
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        body = {"filter": cleaned.get("filter") or "", "boost": cleaned.get("boosts") or []}
        body |= {"pins": cleaned.get("pins") or [], "buries": cleaned.get("buries") or []}
        try:
            fields = scenario_fields_clean(body)
        except ValidationFailed as error:
            raise forms.ValidationError(error.message) from None
        cleaned.update(filter=fields["filter"], boosts=fields["boosts"], pins=fields["pins"], buries=fields["buries"])
        return cleaned


@admin.register(Scenario)
class ScenarioAdmin(GuardedAdmin):
    form = ScenarioForm
    list_display = ["name", "filter", "updated_at"]
    search_fields = ["name"]

    def save_model(self, request: HttpRequest, obj: Scenario, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        scenario_cache_forget()

    def delete_model(self, request: HttpRequest, obj: Scenario) -> None:
        super().delete_model(request, obj)
        scenario_cache_forget()


@admin.register(HiddenItem)
class HiddenItemAdmin(LargeTableAdmin):
    list_display = ["user", "item", "created_at"]
    raw_id_fields = ["user", "item"]
    list_select_related = ["user", "item"]

    # As POST/DELETE /users/{id}/hidden: the user's cached answers go and they read the primary.
    def save_model(self, request: HttpRequest, obj: HiddenItem, form: Any, change: bool) -> None:
        previous = HiddenItem.objects.filter(pk=obj.pk).values_list("user__external_id", flat=True).first()
        super().save_model(request, obj, form, change)
        for external_id in {obj.user.external_id, previous} - {None}:
            user_rules_changed.send(sender=Scenario, external_id=external_id)

    def delete_model(self, request: HttpRequest, obj: HiddenItem) -> None:
        external_id = obj.user.external_id
        super().delete_model(request, obj)
        user_rules_changed.send(sender=Scenario, external_id=external_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[HiddenItem]) -> None:
        users = set(queryset.values_list("user__external_id", flat=True))
        super().delete_queryset(request, queryset)
        for external_id in sorted(users):
            user_rules_changed.send(sender=Scenario, external_id=external_id)

    def search_condition(self, term: str) -> Q:
        return Q(user__external_id=term) | Q(item__external_id=term)
