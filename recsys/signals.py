"""Domain signals: other apps react to stored data without the core importing them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after a batch of interactions is stored; ``user_ids``: the database ids of its users.
interactions_stored = Signal()
