"""Django admin for the core data (the full operator console is built on top of this later)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from recsys.api_keys import api_key_create, api_key_revoke
from recsys.models import ApiKey, EventType, Interaction, Item, User


class LargeTableAdmin(admin.ModelAdmin):
    """Tables that reach millions of rows: never count them all on a list page."""

    show_full_result_count = False
    list_per_page = 50


@admin.register(User)
class UserAdmin(LargeTableAdmin):
    list_display = ["external_id", "created_at", "updated_at"]
    search_fields = ["=external_id"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Item)
class ItemAdmin(LargeTableAdmin):
    list_display = ["external_id", "title", "is_hidden", "is_stub", "updated_at"]
    list_filter = ["is_hidden", "is_stub"]
    search_fields = ["=external_id", "title"]
    exclude = ["search_vector"]
    readonly_fields = ["created_at", "updated_at", "content_changed_at"]


@admin.register(Interaction)
class InteractionAdmin(LargeTableAdmin):
    list_display = ["timestamp", "user", "event_type", "item", "value", "weight"]
    list_filter = ["event_type"]
    list_select_related = ["user", "item"]
    raw_id_fields = ["user", "item"]
    date_hierarchy = "timestamp"
    search_fields = ["=user__external_id", "=item__external_id"]


@admin.register(EventType)
class EventTypeAdmin(admin.ModelAdmin):
    list_display = ["name", "weight", "uses_value", "description"]
    list_editable = ["weight", "uses_value"]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[EventType]) -> None:
        for event_type in queryset:  # one by one: EventType.delete refuses types still in use
            event_type.delete()


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "rate_limit", "created_at", "last_used_at", "revoked_at"]
    fields = ["name", "scopes", "rate_limit", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw_key = api_key_create(name=obj.name, scopes=list(obj.scopes), rate_limit=obj.rate_limit)
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        messages.warning(request, f"API key created. Copy it now, it is not shown again: {raw_key}")

    @admin.action(description="Revoke the selected keys (refused at once)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
