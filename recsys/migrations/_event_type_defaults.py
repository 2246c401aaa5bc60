"""API.md's default event types: (name, weight, uses_value, description)."""

from __future__ import annotations

DEFAULTS = [
    ("view", 1.0, False, "Saw the item"),
    ("click", 2.0, False, "Opened the item"),
    ("add_to_cart", 4.0, False, "Put the item in a cart"),
    ("purchase", 8.0, False, "Bought the item"),
    ("like", 4.0, False, "Explicitly liked the item"),
    ("dislike", -4.0, False, "Explicitly disliked the item (a negative signal)"),
    ("rating", 1.0, True, "Rated the item; the weight is the rating value"),
]
