"""Choose the HNSW ef_search of stored versions again, from the vectors in their tables."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from embeddings.ann_tuning import stored_version_ef_search_tune
from embeddings.models import ActiveVersion, ModelVersion, Status


class Command(BaseCommand):
    help = (
        "Measure recall@10 of each active version's HNSW index (or --model-version N) at a ladder of "
        "ef_search values and keep the smallest that reaches RECSYS_HNSW_TARGET_RECALL: for versions "
        "trained before versions chose their own, or after the target changed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--model-version", dest="model_version", type=int, action="append", help="a version number (repeatable)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.RECSYS_HNSW_TARGET_RECALL:
            raise CommandError("RECSYS_HNSW_TARGET_RECALL is 0: every version searches at RECSYS_HNSW_EF_SEARCH")
        if options["model_version"]:
            # A version still training is left to its run, which writes it.
            stored = ModelVersion.objects.filter(has_tables=True).exclude(status=Status.TRAINING)
            versions = list(stored.filter(pk__in=options["model_version"]))
            missing = set(options["model_version"]) - {v.pk for v in versions}
            if missing:
                raise CommandError(f"no stored version {', '.join(map(str, sorted(missing)))}")
        else:
            versions = [a.version for a in ActiveVersion.objects.select_related("version") if a.version.has_tables]
        for version in versions:
            before = version.ef_search
            stored_version_ef_search_tune(version)
            recall = version.metrics.get("ann_recall@10")
            self.stdout.write(
                f"version {version.pk} ({version.kind}): ef_search {before} -> {version.ef_search}, recall@10 {recall}"
            )
