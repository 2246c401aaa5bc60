"""What an ingestion did: the API's partial-success answer and an import's report."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from recsys.errors import DomainError
from recsys.ingestion.rules import RowError

MAX_EXAMPLES = 20


@dataclass
class BatchResult:
    """The partial-success answer of every batch endpoint."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, index: int, error: DomainError, *, id: str | None = None, **ids: Any) -> None:
        """``id``: the row's own id where it has one (items, users); every error carries the key,
        null for rows identified by their index only (interactions, impressions)."""
        body = {"code": error.code, "message": error.message, "details": error.details}
        self.errors.append({"index": index, "id": id, **ids, "error": body})

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged, "errors": self.errors}


@dataclass
class ImportReport:
    """What an import did: ``created + updated + unchanged + rejected == rows``."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    users_created: int = 0
    items_created: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def reject(self, line: int, error: RowError) -> None:
        self.rejected += 1
        self.reasons[error.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"line {line}: {error.reason}" + (f" ({error.detail!r})" if error.detail else ""))

    def count(self, accepted: int, created: int, updated: int) -> None:
        self.created += created
        self.updated += updated
        self.unchanged += accepted - created - updated  # already stored, or repeated within the file

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self, what: str) -> str:
        line = (
            f"{what}: {self.rows:,} rows in {self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s): "
            f"{self.created:,} created, {self.updated:,} updated, {self.unchanged:,} unchanged, "
            f"{self.rejected:,} rejected"
        )
        if self.users_created or self.items_created:
            line += f"; new users {self.users_created:,}, new stub items {self.items_created:,}"
        return line

    def rejection_lines(self) -> list[str]:
        if not self.rejected:
            return []
        counts = ", ".join(f"{n:,} {reason}" for reason, n in self.reasons.most_common())
        return [f"rejected {self.rejected:,} rows: {counts}", *(f"  {example}" for example in self.examples)]


def progress_bar(total: int | None, *, disabled: bool) -> tqdm[Any]:
    """A bar on stderr, shown only when stderr is a terminal."""
    return tqdm(total=total, unit="rows", unit_scale=True, file=sys.stderr, disable=disabled or not sys.stderr.isatty())
