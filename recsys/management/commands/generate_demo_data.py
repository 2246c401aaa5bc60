"""Generate a synthetic catalog with topics, users with topic tastes, and their interactions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import numpy as np
import numpy.typing as npt
from django.core.management.base import BaseCommand, CommandError, CommandParser

from recsys.ingestion.documents import ItemRow, UserRow, items_load, users_load
from recsys.ingestion.events import event_rules_load, interaction_arrays_load
from recsys.ingestion.readers import CHUNK_ROWS
from recsys.ingestion.report import ImportReport, progress_bar
from recsys.ingestion.rules import EventArrays
from recsys.ingestion.writer import ids_resolve
from recsys.models import Item, User

Ints = npt.NDArray[np.int64]

# Every vocabulary has VOCABULARY_SIZE words, so that one array holds them all.
VOCABULARY_SIZE = 24
TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": ("recipe", "pasta", "garlic", "oven", "sauce", "bake", "spice", "kitchen", "flavor", "roast",
                "simmer", "herbs", "dough", "chef", "grill", "butter", "tomato", "basil", "soup", "dessert",
                "marinade", "skillet", "noodles", "curry"),
    "hiking": ("trail", "summit", "backpack", "boots", "ridge", "forest", "campfire", "canyon", "compass",
               "altitude", "glacier", "valley", "tent", "map", "waterfall", "wilderness", "peak", "switchback",
               "pine", "meadow", "lake", "gear", "route", "sunrise"),
    "astronomy": ("telescope", "galaxy", "nebula", "orbit", "planet", "comet", "star", "eclipse", "cosmos",
                  "lunar", "solar", "asteroid", "constellation", "supernova", "gravity", "observatory", "meteor",
                  "quasar", "spectrum", "satellite", "exoplanet", "horizon", "dwarf", "cluster"),
    "jazz": ("saxophone", "trumpet", "improvisation", "swing", "bebop", "rhythm", "piano", "bass", "drummer",
             "chord", "melody", "blues", "quartet", "solo", "groove", "vinyl", "club", "trio", "ballad", "tempo",
             "harmony", "standard", "scat", "brass"),
    "gardening": ("soil", "compost", "seeds", "roses", "pruning", "mulch", "greenhouse", "bulbs", "perennial",
                  "watering", "harvest", "shovel", "fertilizer", "seedling", "orchard", "hedge", "blossom",
                  "weeds", "trellis", "beds", "lavender", "vines", "tulips", "sprouts"),
    "programming": ("python", "compiler", "database", "algorithm", "function", "debugging", "server", "api",
                    "framework", "variable", "recursion", "syntax", "library", "deploy", "testing", "refactor",
                    "kernel", "thread", "query", "cache", "git", "module", "runtime", "script"),
    "football": ("goal", "striker", "midfield", "penalty", "league", "coach", "stadium", "keeper", "tackle",
                 "referee", "dribble", "corner", "offside", "derby", "transfer", "season", "cup", "fans", "header",
                 "defender", "kickoff", "match", "pitch", "trophy"),
    "photography": ("camera", "lens", "aperture", "shutter", "portrait", "exposure", "tripod", "lighting",
                    "landscape", "zoom", "focus", "darkroom", "film", "sensor", "composition", "flash", "macro",
                    "filter", "studio", "bokeh", "print", "frame", "iso", "panorama"),
    "finance": ("stocks", "bonds", "portfolio", "dividend", "inflation", "budget", "savings", "mortgage",
                "interest", "market", "investor", "pension", "tax", "crypto", "index", "fund", "equity", "risk",
                "credit", "loan", "earnings", "broker", "yield", "bank"),
    "fitness": ("workout", "strength", "cardio", "squat", "yoga", "stretching", "muscle", "treadmill", "protein",
                "endurance", "sprint", "dumbbell", "pilates", "marathon", "core", "rowing", "kettlebell",
                "recovery", "trainer", "gym", "plank", "cycling", "lunges", "hydration"),
    "history": ("empire", "medieval", "dynasty", "revolution", "castle", "archive", "ancient", "pharaoh",
                "treaty", "monarchy", "battle", "manuscript", "artifact", "colonial", "republic", "chronicle",
                "knight", "renaissance", "ruins", "siege", "parliament", "kingdom", "scholar", "relic"),
    "travel": ("passport", "airport", "hotel", "beach", "island", "luggage", "itinerary", "cruise", "hostel",
               "museum", "souvenir", "tour", "visa", "flight", "resort", "backpacking", "city", "train",
               "guidebook", "culture", "bazaar", "harbor", "journey", "postcard"),
}  # fmt: skip
GENERAL_WORDS = ("great", "new", "guide", "best", "simple", "complete", "modern", "classic", "essential",
                 "practical", "ultimate", "introduction", "notes", "story", "review", "collection", "edition",
                 "basics", "advanced", "weekly", "daily", "friendly", "popular", "quick")  # fmt: skip
SYLLABLES = ("ka", "lo", "mi", "ra", "tu", "ve", "zo", "ni", "pe", "sha", "dor", "lin", "mar", "qui", "bel", "tor")
# Each event type's share of events on an item of the user's preferred topics, and elsewhere.
EVENT_MIX: dict[str, tuple[float, float]] = {
    "view": (0.50, 0.70),
    "click": (0.20, 0.12),
    "add_to_cart": (0.07, 0.02),
    "purchase": (0.04, 0.01),
    "like": (0.08, 0.01),
    "dislike": (0.01, 0.09),
    "rating": (0.10, 0.05),
}
# One item in RELIST_EVERY is listed a second time by its seller under an edited title, with the
# same description: the near-duplicates that GET /items/{id}/duplicates finds. Re-listings are new
# items (``item-000001-relisted``) beside the --items originals and have no events yet.
RELIST_EVERY = 100
TITLE_EDITS = ("{} (2nd edition)", "{} - like new", "New: {}", "{} + free shipping", "{}, re-listed")
IN_TOPIC_SHARE = 0.85  # of a user's events fall in their preferred topics
SECONDARY_TOPIC_SHARE = 0.2  # of items have a second category
ZIPF_EXPONENT = 1.0  # popularity of the k-th item of a topic ∝ 1/k^s
TEXT_WORDS = 30
DAYS = 90
# Random streams, so that the catalog does not depend on how many events are drawn.
CATALOG_STREAM, USERS_STREAM, EVENTS_STREAM = 1, 2, 3


def topics_make(count: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """The named topics first, then made-up ones ("topic-13") with pronounceable made-up words."""
    named = list(TOPICS.items())[:count]
    rng = np.random.default_rng([seed, CATALOG_STREAM, count])
    made_up = []
    for k in range(len(named), count):
        syllables = rng.choice(SYLLABLES, size=(VOCABULARY_SIZE, 3))
        made_up.append((f"topic-{k + 1:02d}", tuple("".join(word) for word in syllables)))
    return named + made_up


@dataclass(frozen=True)
class Catalog:
    """Items by topic with a Zipf-like popularity inside each topic."""

    topics: list[tuple[str, tuple[str, ...]]]
    primary: Ints  # topic of each item
    secondary: Ints  # second topic of each item, -1 for none
    by_topic: Ints  # item indexes grouped by topic, most popular first within a topic
    cdf: npt.NDArray[np.float64]  # topic + cumulative popularity inside the topic, aligned with by_topic

    @classmethod
    def make(cls, items: int, topic_count: int, seed: int) -> Catalog:
        rng = np.random.default_rng([seed, CATALOG_STREAM])
        primary = rng.permutation(np.arange(items) % topic_count)  # every topic gets items
        other = (primary + rng.integers(1, max(topic_count, 2), items)) % topic_count
        secondary = np.where((rng.random(items) < SECONDARY_TOPIC_SHARE) & (topic_count > 1), other, -1)
        by_topic = np.lexsort((rng.random(items), primary))  # a random popularity rank inside each topic
        topic_of = primary[by_topic]
        starts = np.searchsorted(topic_of, np.arange(topic_count))
        rank = np.arange(items) - starts[topic_of] + 1
        weights = 1.0 / rank**ZIPF_EXPONENT
        totals = np.bincount(topic_of, weights=weights, minlength=topic_count)
        within = (np.cumsum(weights) - np.concatenate([[0.0], np.cumsum(totals)])[topic_of]) / totals[topic_of]
        within[np.r_[starts[1:] - 1, items - 1]] = 1.0  # close each topic exactly despite rounding
        return cls(topics_make(topic_count, seed), primary, secondary, by_topic, topic_of + within)

    def sample(self, topics: Ints, rng: np.random.Generator) -> Ints:
        """One item of each given topic, popular items more often."""
        positions = np.searchsorted(self.cdf, topics + rng.random(len(topics)), side="right")
        return self.by_topic[np.minimum(positions, len(self.by_topic) - 1)]

    def rows(self, seed: int) -> Iterator[ItemRow]:
        rng = np.random.default_rng([seed, CATALOG_STREAM, 1])
        words = np.array([*(vocabulary for _, vocabulary in self.topics), GENERAL_WORDS])
        count, general = len(self.primary), len(self.topics)
        source = rng.choice(3, size=(count, TEXT_WORDS), p=[0.7, 0.15, 0.15])
        second = np.where(self.secondary >= 0, self.secondary, self.primary)[:, None]
        topic = np.where(source == 0, self.primary[:, None], np.where(source == 1, second, general))
        text = words[topic, rng.integers(0, VOCABULARY_SIZE, (count, TEXT_WORDS))]
        title = words[self.primary[:, None], rng.integers(0, VOCABULARY_SIZE, (count, 3))]
        suffix = words[general, rng.integers(0, VOCABULARY_SIZE, count)]
        edits = rng.integers(0, len(TITLE_EDITS), count)
        relisted = []
        for k in range(count):
            categories = [self.topics[self.primary[k]][0]]
            if self.secondary[k] >= 0:
                categories.append(self.topics[self.secondary[k]][0])
            heading = " ".join(word.capitalize() for word in [*title[k], suffix[k]])
            row = ItemRow(item_id(k), heading, " ".join(text[k]).capitalize() + ".", categories)
            if k % RELIST_EVERY == 0:
                relisted.append(
                    ItemRow(f"{row.external_id}-relisted", TITLE_EDITS[edits[k]].format(heading), row.text, categories)
                )
            yield row
        yield from relisted


@dataclass(frozen=True)
class Audience:
    """Users with one or two preferred topics and a skewed activity."""

    first: Ints  # preferred topic of each user
    second: Ints  # second preferred topic, -1 for none
    activity_cdf: npt.NDArray[np.float64]

    @classmethod
    def make(cls, users: int, topic_count: int, seed: int) -> Audience:
        rng = np.random.default_rng([seed, USERS_STREAM])
        first = rng.integers(0, topic_count, users)
        other = (first + rng.integers(1, max(topic_count, 2), users)) % topic_count
        second = np.where((rng.random(users) < 0.5) & (topic_count > 1), other, -1)
        activity = rng.lognormal(0.0, 1.0, users)
        return cls(first, second, np.cumsum(activity) / activity.sum())

    def rows(self, topics: list[tuple[str, tuple[str, ...]]]) -> Iterator[UserRow]:
        for k, (first, second) in enumerate(zip(self.first, self.second, strict=True)):
            preferred = [topics[first][0]] + ([topics[second][0]] if second >= 0 else [])
            yield UserRow(user_id(k), {"preferred_topics": preferred})

    def sample(self, count: int, rng: np.random.Generator) -> Ints:
        return np.minimum(np.searchsorted(self.activity_cdf, rng.random(count), side="right"), len(self.first) - 1)


def item_id(k: int) -> str:
    return f"item-{k + 1:06d}"


def user_id(k: int) -> str:
    return f"user-{k + 1:06d}"


@dataclass(frozen=True)
class EventDraw:
    """How events are drawn: who, which topic, which item, what kind, when."""

    catalog: Catalog
    audience: Audience
    user_ids: Ints  # database id of each user index
    item_ids: Ints  # database id of each item index
    codes: npt.NDArray[np.int16]  # database code of each EVENT_MIX type
    rating_code: int
    end_us: int

    def chunk(self, size: int, rng: np.random.Generator) -> EventArrays:
        users = self.audience.sample(size, rng)
        first, second = self.audience.first[users], self.audience.second[users]
        favourite = np.where((second >= 0) & (rng.random(size) < 0.5), second, first)
        elsewhere = rng.integers(0, len(self.catalog.topics), size)
        topics = np.where(rng.random(size) < IN_TOPIC_SHARE, favourite, elsewhere)
        liked = (topics == first) | (topics == second)
        codes = self.codes[np.where(liked, _kinds(0, rng.random(size)), _kinds(1, rng.random(size)))]
        stars = np.where(liked, 3.0, 1.0) + 0.5 * rng.integers(0, 5, size)
        values = np.where(codes == self.rating_code, stars, np.nan)
        stamps = self.end_us - rng.integers(0, DAYS * 86_400, size) * 1_000_000
        items = self.catalog.sample(topics, rng)
        return EventArrays(self.user_ids[users], self.item_ids[items], codes, values, stamps)

    def batches(self, count: int, seed: int) -> Iterator[EventArrays]:
        for chunk, start in enumerate(range(0, count, CHUNK_ROWS)):
            yield self.chunk(min(CHUNK_ROWS, count - start), np.random.default_rng([seed, EVENTS_STREAM, chunk]))


def _kinds(column: int, draws: npt.NDArray[np.float64]) -> Ints:
    """Indexes into EVENT_MIX, drawn with the shares of ``column`` (0: preferred topics, 1: elsewhere)."""
    shares = np.cumsum([mix[column] for mix in EVENT_MIX.values()])
    return np.minimum(np.searchsorted(shares / shares[-1], draws, side="right"), len(EVENT_MIX) - 1)


def database_ids(model: type[User] | type[Item], external_ids: list[str]) -> Ints:
    ids, _ = ids_resolve(model=model, external_ids=external_ids, create=False)
    return np.array([ids[external_id] for external_id in external_ids], dtype=np.int64)


class Command(BaseCommand):
    help = (
        "Load a synthetic catalog whose items belong to topics (title, text and categories from each topic's "
        "words) and users who mostly interact with items of their one or two preferred topics (stored in their "
        "attributes), popular items more often. Deterministic for a seed and end date: re-running changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--items", type=int, default=2_000)
        parser.add_argument("--users", type=int, default=1_000)
        parser.add_argument("--interactions", type=int, default=50_000)
        parser.add_argument("--topics", type=int, default=12)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument(
            "--end", type=date.fromisoformat, help="last day of the 90 days of events (default: today, UTC)"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        items, users, topics, seed = options["items"], options["users"], options["topics"], options["seed"]
        if min(users, topics, options["interactions"] + 1) < 1 or items < topics:
            raise CommandError("need at least one user and one topic, and at least as many items as topics")
        rules = event_rules_load()
        codes = rules.codes(list(EVENT_MIX))
        if (codes < 0).any():
            raise CommandError(f"the demo needs the event types {', '.join(EVENT_MIX)}")
        catalog, audience = Catalog.make(items, topics, seed), Audience.make(users, topics, seed)
        self._report("items", items_load(rows=catalog.rows(seed)))
        self._report("users", users_load(rows=audience.rows(catalog.topics)))
        end = datetime.combine(options["end"] or datetime.now(UTC).date(), time(), tzinfo=UTC)
        draw = EventDraw(
            catalog,
            audience,
            database_ids(User, [user_id(k) for k in range(users)]),
            database_ids(Item, [item_id(k) for k in range(items)]),
            codes,
            int(rules.codes(["rating"])[0]),
            int(end.timestamp()) * 1_000_000,
        )
        with progress_bar(options["interactions"], disabled=options["no_progress"]) as bar:
            batches = draw.batches(options["interactions"], seed)
            report = interaction_arrays_load(batches=batches, rules=rules, progress=bar.update)
        self._report("interactions", report)

    def _report(self, what: str, report: ImportReport) -> None:
        self.stdout.write(report.summary(what))
        for line in report.rejection_lines():
            self.stdout.write(line)
