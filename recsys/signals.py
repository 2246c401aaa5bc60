"""Domain signals: other apps react to stored data without the core importing them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after a batch of interactions is stored; ``user_ids`` and ``external_ids``: its users'
# database ids and client ids.
interactions_stored = Signal()
# Sent after items are written; ``created`` and ``changed``: sets of client ids.
items_stored = Signal()
# Sent after an item or a user is deleted; ``external_id``: the client id.
item_deleted = Signal()
user_deleted = Signal()
# Sent after a user's hidden items change; ``external_id``: the user's client id.
user_rules_changed = Signal()
# Sent after a file import stored events (no arguments: every cached answer may be stale; the users'
# vectors are folded in again by the sweep).
interactions_imported = Signal()
