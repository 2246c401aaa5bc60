"""App config of online experiments: variants, assignment, per-variant metrics."""

from __future__ import annotations

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"
    verbose_name = "Experiments"

    def ready(self) -> None:
        from embeddings import runs
        from experiments.selectors import experiment_versions_pinned, experiments_read_from
        from recsys.feedback import partitions

        # A running experiment's model versions keep their vector tables when older versions are pruned.
        if experiment_versions_pinned not in runs.prune_guards:
            runs.prune_guards.append(experiment_versions_pinned)
        # and its impressions outlive their retention while its figures are still computed.
        if experiments_read_from not in partitions.retention_guards:
            partitions.retention_guards.append(experiments_read_from)
