"""App config of the REST API."""

from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "REST API"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from api import schema  # noqa: F401  (registers the OpenAPI auth extension)
        from recsys.db import statement_timeout_forget

        connection_created.connect(statement_timeout_forget, dispatch_uid="recsys-statement-timeout")
