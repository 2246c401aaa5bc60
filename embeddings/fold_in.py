"""User vectors folded in from a user's items and weights against a version's item vectors, without
retraining: serving does it at request time, the freshness job for users in bulk."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from embeddings.interactions import weights_transform
from embeddings.learners import fold_in
from embeddings.models import ModelVersion
from embeddings.vectors.rows import vectors_matrix


class FoldIn:
    """User vectors of one version from their items and summed weights, without retraining.

    EASE folds in exactly as Σ weight × item input vector; ALS/BPR/LMF solve ALS's user step
    against the version's item factors (exact for ALS trained on raw weights).
    """

    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        self.column = "fold_in" if version.algorithm == "ease" else "embedding"
        self.gram = None if version.item_gram is None else np.asarray(version.item_gram, dtype=np.float64)
        self.regularization = float(version.params.get("regularization", 0.05))
        self.alpha = float(version.params.get("alpha", 1.0))
        # A user's summed weights read as training read them (LearnerParams.weighting).
        self.weighting = str(version.params.get("weighting", "raw"))
        self.scale = float(version.params.get("weight_scale") or 1.0)

    def item_vectors(self, items: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The version's vectors of these items: (sorted ids of those it has, their rows)."""
        return vectors_matrix(self.version.item_table, "item_id", items, column=self.column)

    def vector(
        self,
        items: npt.NDArray[np.int64],
        weights: npt.NDArray[np.float32],
        known: npt.NDArray[np.int64],
        factors: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32] | None:
        """A user's vector from ``item_vectors`` that cover their items; None when the version
        knows none of them, only with weights that are not positive (dislikes alone say what the
        user does not want, not what they do: ALS's vector would be 0, every score 0), or when no
        solver state is stored."""
        at = np.searchsorted(known, items)
        usable = at < len(known)
        usable[usable] = known[at[usable]] == items[usable]
        usable &= weights != 0
        if not (usable & (weights > 0)).any():
            return None
        rows, weights = factors[at[usable]], weights_transform(weights[usable], self.weighting, self.scale)
        if self.version.algorithm == "ease":
            return (weights @ rows).astype(np.float32)
        if self.gram is None:
            return None
        return fold_in(rows, weights, gram=self.gram, regularization=self.regularization, alpha=self.alpha)


def user_vector_fold_in(
    version: ModelVersion, items: list[int], weights: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32] | None:
    """One user's vector of ``version`` from their items and summed weights (request time)."""
    solver = FoldIn(version)
    ids = np.asarray(items, dtype=np.int64)
    known, factors = solver.item_vectors(np.unique(ids))
    return solver.vector(ids, np.asarray(weights, dtype=np.float32), known, factors)
