"""Admin URLs that no query string can turn into a 500: what PostgreSQL refuses becomes "invalid filter"."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.db import DataError, ProgrammingError, transaction
from django.http import HttpRequest

# What a well-formed lookup with a value PostgreSQL cannot take raises when it runs: a malformed
# array literal (?categories=jazz), a NUL character, an invalid regular expression, a transform
# whose extension is not installed (?title__unaccent=); and a value the field itself refuses when
# the query is compiled (?ip_address=jazz: ValueError). Django validates only what it can parse.
REFUSED_BY_DATABASE = (DataError, ProgrammingError)
# A value the driver cannot send as the column's type (?encoder_state=x: text for a bytea column)
# fails as a TypeError while the query is executed; a year past what a date can hold
# (?created_at__year=99999999999999999999) as an OverflowError while it is compiled.
REFUSED_LOOKUP = (*REFUSED_BY_DATABASE, ValueError, TypeError, OverflowError)
MESSAGE_CHARS = 200


class GuardedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose list and object URLs answer 302/400/404 to any parameter, never 500.

    Django turns lookups it cannot build into IncorrectLookupParameters (a redirect to ``?e=1``);
    lookups it builds but the database refuses fail later, while the page renders. The list's
    count and rows are therefore read here, inside a savepoint, where a refusal can still be
    answered the way Django answers its own.
    """

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        try:
            with transaction.atomic():
                changelist = super().get_changelist_instance(request)
                len(changelist.result_list)  # runs and caches the rows the page shows
        except REFUSED_LOOKUP as error:
            detail = str(error).splitlines()[0][:MESSAGE_CHARS] if str(error) else type(error).__name__
            messages.error(request, f"The list could not be filtered that way ({detail}); showing it unfiltered.")
            raise IncorrectLookupParameters(detail) from error
        return changelist

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        try:
            with transaction.atomic():
                return super().get_object(request, object_id, from_field)
        except REFUSED_BY_DATABASE:  # e.g. a NUL in a text primary key: no such object
            return None


def admins_guard(site: admin.AdminSite) -> list[str]:
    """Give every ModelAdmin registered on ``site`` the guard, whichever app registered it (Django's
    users and groups, django-axes' logs, ours); returns the models whose admin was re-registered."""
    guarded = []
    for model, model_admin in list(site._registry.items()):
        if isinstance(model_admin, GuardedAdmin):
            continue
        base = type(model_admin)
        site.unregister(model)
        site.register(model, type(f"Guarded{base.__name__}", (GuardedAdmin, base), {"__module__": base.__module__}))
        guarded.append(model._meta.label)
    return guarded
