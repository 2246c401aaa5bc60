"""API.md's default event types: (name, weight, uses_value, description), and how they are seeded."""

from __future__ import annotations

from typing import Any

DEFAULTS = [
    ("view", 1.0, False, "Saw the item"),
    ("click", 2.0, False, "Opened the item"),
    ("add_to_cart", 4.0, False, "Put the item in a cart"),
    ("purchase", 8.0, False, "Bought the item"),
    ("like", 4.0, False, "Explicitly liked the item"),
    ("dislike", -4.0, False, "Explicitly disliked the item (a negative signal)"),
    ("rating", 1.0, True, "Rated the item; the weight is the rating value"),
]


def event_types_seed(event_type: Any, using: str = "default") -> None:
    """Create each default event type that ``event_type`` (the model, or a migration's historical
    model) does not have yet in database ``using``; one that exists is left as the operator set it."""
    for name, weight, uses_value, description in DEFAULTS:
        event_type.objects.using(using).get_or_create(
            name=name, defaults={"weight": weight, "uses_value": uses_value, "description": description}
        )
