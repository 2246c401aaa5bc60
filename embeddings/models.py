"""Model versions and the one pointer per kind that decides what is served.

A version's vectors live in tables of their own (``embeddings_v<N>_item`` / ``_user``), created
by the training run, indexed after the bulk COPY, and dropped whole when the version is pruned:
deleting millions of rows from an HNSW-indexed table instead leaves hours of vacuum work.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from embeddings.vectors import tables


class Kind(models.TextChoices):
    COLLABORATIVE = "collaborative"
    CONTENT = "content"


class Status(models.TextChoices):
    TRAINING = "training"
    READY = "ready"
    ACTIVE = "active"
    FAILED = "failed"
    RETIRED = "retired"


class ModelVersion(models.Model):
    """One training run and, once it succeeds, the vectors it produced."""

    kind = models.CharField(max_length=20, choices=Kind.choices)
    algorithm = models.CharField(max_length=40)
    params = models.JSONField(default=dict, blank=True)
    dimensions = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.TRAINING, db_index=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Offline metrics on the validation split.")
    baseline_metrics = models.JSONField(default=dict, blank=True, help_text="Popularity on the same split.")
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage.")
    counts = models.JSONField(default=dict, blank=True, help_text="Users, items and interactions trained on.")
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    has_tables = models.BooleanField(default=False)
    # The column type of the version's tables: "halfvec" (float16) for catalogues of
    # RECSYS_HALFVEC_MIN_ITEMS items or more on pgvector >= 0.7, else "vector"; searches send their
    # query vector as this type so the HNSW index serves them.
    vector_type = models.CharField(
        max_length=10, choices=[(t, t) for t in tables.VECTOR_TYPES], default=tables.VECTOR, editable=False
    )
    # The HNSW search's ef_search for this version's item table, chosen when it was trained: the
    # smallest that reaches RECSYS_HNSW_TARGET_RECALL on a sample of its own queries
    # (embeddings/ann_tuning.py); None: RECSYS_HNSW_EF_SEARCH.
    ef_search = models.PositiveIntegerField(null=True, blank=True, editable=False)
    # YᵀY of the item factors (d × d), so that a user vector can be folded in from their items alone.
    item_gram = models.JSONField(null=True, blank=True)
    # Content versions: what a fitted encoder needs to encode a search query in another process
    # (the TF-IDF vocabulary and SVD; empty for pretrained models), and the k-means centroids
    # (k × d) that new items are assigned to between builds.
    encoder_state = models.BinaryField(null=True, blank=True, editable=False)
    centroids = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A running version holds a lease; a worker killed mid-run lets it expire instead of
    # blocking the next run forever.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When serving last moved off this version: other processes may still read it for a moment
    # (their cached pointer, a lagging replica), so pruning leaves its tables that much longer.
    deactivated_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["kind", "-id"], name="modelversion_kind_newest")]

    def __str__(self) -> str:
        return f"{self.kind} v{self.pk} ({self.algorithm}, {self.status})"

    @property
    def served_ef_search(self) -> int | None:
        """The ef_search its searches run at: its own, or None (RECSYS_HNSW_EF_SEARCH) when it has
        none or the tuning is off (RECSYS_HNSW_TARGET_RECALL=0 switches tuned versions back too)."""
        return self.ef_search if settings.RECSYS_HNSW_TARGET_RECALL else None

    @property
    def item_table(self) -> str:
        return tables.item_table(self.pk)

    @property
    def user_table(self) -> str:
        return tables.user_table(self.pk)


class ActiveVersion(models.Model):
    """The version served for a kind; flipped in one transaction once a new one is complete."""

    kind = models.CharField(max_length=20, choices=Kind.choices, primary_key=True)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    activated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.kind} → v{self.version_id}"


class VectorSpace(models.Model):
    """A custom space of client-computed item vectors (e.g. image embeddings), one table each.

    The first vector stored fixes the dimensions; the table is ``embeddings_space_<name>``.
    """

    name = models.CharField(max_length=40, primary_key=True)
    dimensions = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.dimensions}-d)"

    @property
    def table(self) -> str:
        return tables.space_table(self.name)


class ItemPopularity(models.Model):
    """Each item's popularity score for the default window, rewritten by the refresh task.

    ``score`` is the item's share in percent of the time-decayed, per-user capped interaction weight
    within RECSYS_POPULAR_WINDOW_DAYS, or of all time when that window was too quiet at refresh time
    (``basis`` says which).
    """

    item = models.OneToOneField("recsys.Item", on_delete=models.CASCADE, primary_key=True, db_constraint=False)
    score = models.FloatField()
    basis = models.CharField(max_length=10)  # "window" or "all_time"
    refreshed_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["-score"], name="itempopularity_score")]

    def __str__(self) -> str:
        return f"item {self.item_id}: {self.score:.3f} ({self.basis})"


class EmbeddingMap(models.Model):
    """A 2-D projection of a sample of one version's item vectors, for the admin's embedding map.

    Computed by a worker (a PCA of up to 20,000 items) and kept, so that opening the map costs
    one row read; ``points`` is columnar (``x``, ``y``, ``group``, ``item``, ``title`` lists and
    the ``groups`` labels) to stay small as JSON.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        READY = "ready"
        FAILED = "failed"

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="embedding_map")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    coloured_by = models.CharField(max_length=20, blank=True, help_text="cluster (content) or category.")
    sample_size = models.PositiveIntegerField(default=0)
    points = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField()
    computed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"map of v{self.version_id} ({self.state}, {self.sample_size} points)"


class VersionArtifacts(models.Model):
    """What a collaborative run learns besides its vectors, loaded once per process by version.

    ``content_map``: the content → collaborative ridge map (``embeddings.cold_items``) as .npz
    bytes, with the content version it was fitted on; new items get mapped vectors with it.
    ``ranker``: the LightGBM ranking stage's model text (empty when it was not trained), and
    ``ranking_state``: the per-item arrays its sources and features read (.npz bytes).
    ``ranking``: the stage's validation report (NDCG@10 ranked vs each source, whether it is
    used, feature importances, per-source recall@depth).
    """

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, primary_key=True, related_name="artifacts")
    content_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    content_map = models.BinaryField(null=True, blank=True, editable=False)
    ranker = models.TextField(blank=True, editable=False)
    ranking_state = models.BinaryField(null=True, blank=True, editable=False)
    ranking = models.JSONField(default=dict, blank=True)
    ranking_used = models.BooleanField(default=False, help_text="The ranker beat the best single source.")

    def __str__(self) -> str:
        return f"artifacts of v{self.version_id}"
