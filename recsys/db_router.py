"""The database router: reads go where ``recsys.replicas`` routes this context, writes to the primary."""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS

from recsys.replicas import read_alias


class ReplicaRouter:
    """Outside a serving read every query runs on the primary, also for instances loaded from a
    replica (their related lookups would otherwise follow them there); replicas never migrate."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return read_alias()

    def db_for_write(self, model: type, **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # one database and its copies

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == DEFAULT_DB_ALIAS
