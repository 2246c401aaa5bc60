"""recsys: a self-hosted recommendation backend on Django, PostgreSQL/pgvector and Celery."""

from __future__ import annotations

from recsys.celery import app as celery_app

__all__ = ["celery_app"]
