"""factory_boy factories for the core models."""

from __future__ import annotations

from datetime import UTC

import factory
from factory.django import DjangoModelFactory

from recsys.models import Interaction, Item, User


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("external_id",)

    external_id = factory.Sequence(lambda n: f"user-{n}")


class ItemFactory(DjangoModelFactory):
    class Meta:
        model = Item
        django_get_or_create = ("external_id",)

    external_id = factory.Sequence(lambda n: f"item-{n}")
    title = factory.Faker("sentence", nb_words=3)
    text = factory.Faker("paragraph")
    categories = factory.LazyFunction(lambda: ["general"])


class InteractionFactory(DjangoModelFactory):
    class Meta:
        model = Interaction

    user = factory.SubFactory(UserFactory)
    item = factory.SubFactory(ItemFactory)
    event_type = "view"
    weight = 1.0
    timestamp = factory.Faker("date_time_this_year", tzinfo=UTC)


class FakeClock:
    """A ``time.monotonic`` stand-in that moves only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
