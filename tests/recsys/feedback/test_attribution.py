"""Attribution inside the interactions ingest: by recommendation id, else by the latest impression in the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from recsys.ingestion.events import interactions_load
from recsys.ingestion.readers import csv_events_read
from recsys.models import Attribution, EventType
from recsys.recommendation_ids import recommendation_id_mint

pytestmark = pytest.mark.django_db
# Recent: an id is matched to impressions shown from a day before it was minted.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def at(delta: timedelta = timedelta()) -> str:
    return (T0 + delta).isoformat()


def show(client, items, *, when=T0, user="u1", recommendation_id=None):
    row = {"user": user, "items": items, "timestamp": when.isoformat()}
    if recommendation_id:
        row["recommendation_id"] = recommendation_id
    response = client.post("/api/v1/impressions", {"impressions": [row]}, format="json")
    assert response.status_code == 200 and not response.json()["errors"], response.content


def interact(client, *rows):
    response = client.post("/api/v1/interactions", {"interactions": list(rows)}, format="json")
    assert response.status_code == 200 and not response.json()["errors"], response.content
    return response.json()


def attributed():
    return {
        (a.item.external_id, a.event_type): a
        for a in Attribution.objects.select_related("item").order_by("item__external_id", "event_type")
    }


def test_a_click_naming_its_recommendation_takes_the_variant_from_the_id_and_the_place_from_the_impression(writer):
    rid = recommendation_id_mint(experiment_id=3, variant="treatment")
    show(writer, ["i1", "i2"], recommendation_id=rid)

    interact(
        writer,
        {"user": "u1", "item": "i2", "type": "click", "recommendation_id": rid, "timestamp": at(timedelta(minutes=5))},
    )

    click = attributed()[("i2", "click")]
    assert (click.recommendation_id, click.experiment_id, click.variant) == (rid, 3, "treatment")
    assert (click.shown_at, click.position) == (T0, 2)
    assert click.occurred_at == T0 + timedelta(minutes=5)
    assert click.weight == 2.0


def test_a_click_naming_a_recommendation_never_seen_as_impression_is_still_attributed_to_it(writer):
    rid = recommendation_id_mint(experiment_id=3, variant="control")
    interact(writer, {"user": "u1", "item": "i9", "type": "purchase", "recommendation_id": rid})

    purchase = attributed()[("i9", "purchase")]
    assert (purchase.experiment_id, purchase.variant, purchase.shown_at, purchase.position) == (
        3,
        "control",
        None,
        None,
    )


def test_a_click_without_id_goes_to_the_latest_impression_of_its_item_within_the_window(writer):
    early = recommendation_id_mint(experiment_id=1, variant="a")
    late = recommendation_id_mint(experiment_id=1, variant="b")
    show(writer, ["i1", "i2"], recommendation_id=early, when=T0 - timedelta(hours=3))
    show(writer, ["i3", "i1"], recommendation_id=late, when=T0 - timedelta(hours=1))
    show(writer, ["i1"], when=T0 + timedelta(minutes=1))  # after the click: not the one that led to it

    interact(writer, {"user": "u1", "item": "i1", "type": "add_to_cart", "timestamp": at()})

    cart = attributed()[("i1", "add_to_cart")]
    assert (cart.recommendation_id, cart.variant, cart.position) == (late, "b", 2)
    assert cart.shown_at == T0 - timedelta(hours=1)


@override_settings(RECSYS_ATTRIBUTION_WINDOW=3600)
def test_the_window_includes_its_edge_and_nothing_older(writer):
    show(writer, ["edge"], when=T0 - timedelta(hours=1))
    show(writer, ["past"], when=T0 - timedelta(hours=1, microseconds=1))
    show(writer, ["other-user"], user="u2", when=T0)

    interact(
        writer,
        {"user": "u1", "item": "edge", "type": "click", "timestamp": at()},
        {"user": "u1", "item": "past", "type": "click", "timestamp": at()},
        {"user": "u1", "item": "other-user", "type": "click", "timestamp": at()},
    )

    assert list(attributed()) == [("edge", "click")]


def test_events_that_do_not_count_as_clicks_are_not_attributed(writer):
    rid = recommendation_id_mint(experiment_id=3, variant="a")
    show(writer, ["i1"], recommendation_id=rid)

    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=1))},
        {
            "user": "u1",
            "item": "i1",
            "type": "dislike",
            "recommendation_id": rid,
            "timestamp": at(timedelta(seconds=2)),
        },
    )

    assert attributed() == {}


def test_an_operator_can_make_a_type_count_as_a_click(writer):
    EventType.objects.filter(name="view").update(counts_as_click=True)
    show(writer, ["i1"])
    interact(writer, {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=1))})
    assert list(attributed()) == [("i1", "view")]


def test_re_sending_an_attributed_event_changes_nothing(writer):
    show(writer, ["i1"])
    row = {"user": "u1", "item": "i1", "type": "like", "timestamp": at(timedelta(seconds=1))}
    interact(writer, row, row)

    assert interact(writer, row)["unchanged"] == 1
    assert Attribution.objects.count() == 1


def test_a_file_import_attributes_like_the_api(writer, tmp_path):
    rid = recommendation_id_mint(experiment_id=4, variant="a")
    show(writer, ["i1", "i2"], recommendation_id=rid)
    path = tmp_path / "events.csv"
    path.write_text(
        "user,item,type,timestamp,recommendation_id\n"
        f"u1,i1,click,{at(timedelta(seconds=5))},{rid}\n"
        f"u1,i2,click,{at(timedelta(seconds=6))},\n"
    )

    report = interactions_load(chunks=csv_events_read(path))

    assert report.rejected == 0
    clicks = attributed()
    assert (clicks[("i1", "click")].position, clicks[("i1", "click")].variant) == (1, "a")
    assert (clicks[("i2", "click")].position, clicks[("i2", "click")].recommendation_id) == (2, rid)


def test_an_interaction_with_a_malformed_recommendation_id_is_rejected_alone(writer):
    response = writer.post(
        "/api/v1/interactions",
        {
            "interactions": [
                {"user": "u1", "item": "i1", "type": "click", "recommendation_id": 5},
                {"user": "u1", "item": "i2", "type": "click"},
            ]
        },
        format="json",
    )
    body = response.json()
    assert body["created"] == 1
    assert body["errors"][0]["index"] == 0
    assert body["errors"][0]["error"]["details"] == {"recommendation_id": ["1-80 visible ASCII characters"]}


def test_an_impression_sent_after_its_click_still_gets_the_click(writer):
    rid = recommendation_id_mint(experiment_id=5, variant="b")
    interact(writer, {"user": "u1", "item": "i2", "type": "click", "timestamp": at(timedelta(minutes=1))})
    assert attributed() == {}

    show(writer, ["i1", "i2"], recommendation_id=rid)

    click = attributed()[("i2", "click")]
    assert (click.recommendation_id, click.variant, click.position, click.shown_at) == (rid, "b", 2, T0)


def test_a_late_impression_fills_in_where_its_recommendation_was_shown(writer):
    rid = recommendation_id_mint(experiment_id=5, variant="b")
    interact(
        writer,
        {
            "user": "u1",
            "item": "i2",
            "type": "purchase",
            "recommendation_id": rid,
            "timestamp": at(timedelta(minutes=1)),
        },
    )
    assert attributed()[("i2", "purchase")].position is None

    show(writer, ["i2"], recommendation_id=rid)

    purchase = attributed()[("i2", "purchase")]
    assert (purchase.position, purchase.shown_at, purchase.variant) == (1, T0, "b")


def test_a_late_impression_never_moves_an_attribution_or_claims_clicks_outside_the_window(writer):
    first = recommendation_id_mint(experiment_id=5, variant="a")
    show(writer, ["i1"], recommendation_id=first, when=T0 - timedelta(minutes=10))
    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "click", "timestamp": at()},
        {"user": "u1", "item": "i1", "type": "like", "timestamp": at(-timedelta(hours=1))},
        {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=1))},
    )

    show(
        writer,
        ["i1"],
        recommendation_id=recommendation_id_mint(experiment_id=5, variant="b"),
        when=T0 - timedelta(minutes=5),
    )

    assert list(attributed()) == [("i1", "click")]  # the like came before both; a view is no click
    assert attributed()[("i1", "click")].variant == "a"


def show_many(client, *rows):
    response = client.post("/api/v1/impressions", {"impressions": list(rows)}, format="json")
    assert response.status_code == 200 and not response.json()["errors"], response.content


def attributed_pairs():
    return sorted(
        (a.user.external_id, a.item.external_id, a.event_type)
        for a in Attribution.objects.select_related("user", "item")
    )


@override_settings(RECSYS_ATTRIBUTION_WINDOW=3600)
def test_a_late_impression_batch_credits_only_clicks_of_its_own_users_and_items_in_the_window(writer):
    # Clicks that arrived first (u1's is the only one a list of the batch led to), then the batch.
    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "click", "timestamp": at(timedelta(minutes=1))},
        {"user": "u2", "item": "i1", "type": "view", "timestamp": at(timedelta(minutes=1))},  # no click
        {"user": "u3", "item": "i9", "type": "click", "timestamp": at(timedelta(minutes=1))},  # not in u3's list
        {"user": "u4", "item": "i1", "type": "click", "timestamp": at(timedelta(hours=1, seconds=1))},  # too late
        {"user": "u5", "item": "i1", "type": "click", "timestamp": at(timedelta(minutes=1))},  # u5 is not shown it
    )
    assert Attribution.objects.count() == 0

    show_many(
        writer,
        *({"user": user, "items": ["i1", "i2"], "timestamp": at()} for user in ("u1", "u2", "u3", "u4")),
        {"user": "u5", "items": ["i2"], "timestamp": at()},
    )

    assert attributed_pairs() == [("u1", "i1", "click")]


def test_an_impression_batch_whose_users_clicked_nothing_credits_nothing_and_stores_every_impression(writer):
    interact(writer, {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(minutes=1))})

    body = writer.post(
        "/api/v1/impressions",
        {"impressions": [{"user": "u1", "items": ["i1", "i2"], "timestamp": at()}]},
        format="json",
    ).json()

    assert (body["created"], Attribution.objects.count()) == (2, 0)


@override_settings(RECSYS_ATTRIBUTION_WINDOW=3600)
def test_one_batch_mixing_our_ids_other_ids_and_none_attributes_each_click_by_its_own_rule(writer):
    ours = recommendation_id_mint(experiment_id=7, variant="a")  # minted now: its impressions from a day before
    show(writer, ["i1"], recommendation_id=ours, when=T0 - timedelta(hours=20))  # far outside the 1 h window
    show(writer, ["i2"], recommendation_id="partner-42", when=T0 - timedelta(days=40))  # another system's id
    show(writer, ["i3"], when=T0 - timedelta(minutes=30))
    show(writer, ["i4"], when=T0 - timedelta(hours=2))  # before the window of the click without id

    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "click", "recommendation_id": ours, "timestamp": at()},
        {"user": "u1", "item": "i2", "type": "click", "recommendation_id": "partner-42", "timestamp": at()},
        {"user": "u1", "item": "i3", "type": "click", "timestamp": at()},
        {"user": "u1", "item": "i4", "type": "click", "timestamp": at()},
    )

    clicks = attributed()
    assert sorted(clicks) == [("i1", "click"), ("i2", "click"), ("i3", "click")]
    assert clicks[("i1", "click")].shown_at == T0 - timedelta(hours=20)
    assert clicks[("i2", "click")].shown_at == T0 - timedelta(days=40)
    assert clicks[("i3", "click")].shown_at == T0 - timedelta(minutes=30)


def test_a_batch_without_click_type_events_writes_no_attribution_and_one_with_clicks_does(writer):
    show(writer, ["i1", "i2"])

    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=1))},
        {"user": "u1", "item": "i2", "type": "dislike", "timestamp": at(timedelta(seconds=2))},
    )
    assert Attribution.objects.count() == 0

    interact(
        writer,
        {"user": "u1", "item": "i1", "type": "view", "timestamp": at(timedelta(seconds=3))},
        {"user": "u1", "item": "i2", "type": "click", "timestamp": at(timedelta(seconds=4))},
    )
    assert attributed_pairs() == [("u1", "i2", "click")]


def test_impressions_and_attributions_are_stored_while_redis_is_down(writer, redis_down):
    show(writer, ["i1", "i2"])
    interact(writer, {"user": "u1", "item": "i2", "type": "click", "timestamp": at(timedelta(seconds=30))})

    assert attributed()[("i2", "click")].position == 2


def test_a_late_impression_batch_gives_a_waiting_click_the_impression_of_its_own_id(writer):
    # Given a click naming R1, stored before any impression (attributed to R1, no place yet)
    r1, r2 = (recommendation_id_mint(experiment_id=5, variant=v) for v in ("a", "b"))
    interact(
        writer,
        {"user": "u1", "item": "i2", "type": "click", "recommendation_id": r1, "timestamp": at(timedelta(minutes=5))},
    )

    # When one batch brings R1's impression and, later, R2's showing the same item
    show_many(
        writer,
        {"user": "u1", "items": ["i2"], "timestamp": at(), "recommendation_id": r1},
        {"user": "u1", "items": ["i9", "i2"], "timestamp": at(timedelta(minutes=2)), "recommendation_id": r2},
    )

    # Then the click keeps its own recommendation and gets where that one showed it
    click = attributed()[("i2", "click")]
    assert (click.recommendation_id, click.variant, click.shown_at, click.position) == (r1, "a", T0, 1)


# ---- a click and its impression in flight at the same time ----------------------------------------------


def paused(module, name, monkeypatch):
    """Patch ``module.name`` so that it waits, after its work and before its transaction commits, until
    released; returns (started, release)."""
    import threading

    started, release = threading.Event(), threading.Event()
    work = getattr(module, name)

    def waiting(*args, **kwargs):
        result = work(*args, **kwargs)
        started.set()
        assert release.wait(30)
        return result

    monkeypatch.setattr(module, name, waiting)
    return started, release


def in_thread(call):
    import threading

    from django.db import connection

    failures = []

    def run():
        try:
            call()
        except BaseException as exc:  # reported by the test
            failures.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failures


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first_in", ["impression", "click"])
def test_a_click_and_its_impression_sent_at_the_same_moment_are_attributed(first_in, monkeypatch):
    # Given one batch stored but not yet committed (the other cannot see its rows), while the other
    # batch is stored and committed; then the first commits
    from recsys.ingestion import events, impressions
    from recsys.ingestion.events import interactions_ingest
    from recsys.ingestion.impressions import impressions_ingest
    from recsys.models import Item

    Item.objects.bulk_create([Item(external_id="i1"), Item(external_id="i2")])  # no content build to flush
    impression = [{"user": "u1", "items": ["i1", "i2"], "timestamp": at()}]
    click = [{"user": "u1", "item": "i2", "type": "click", "timestamp": at(timedelta(minutes=1))}]
    if first_in == "impression":
        started, release = paused(impressions, "_store", monkeypatch)
        thread, failures = in_thread(lambda: impressions_ingest(rows=impression))
        assert started.wait(30)
        interactions_ingest(rows=click)
    else:
        started, release = paused(events, "_stored", monkeypatch)
        thread, failures = in_thread(lambda: interactions_ingest(rows=click))
        assert started.wait(30)
        impressions_ingest(rows=impression)
    assert not Attribution.objects.exists()  # neither saw the other's rows
    release.set()
    thread.join(30)

    # Then the click is credited to the impression, whichever committed last
    assert not failures
    click_row = attributed()[("i2", "click")]
    assert (click_row.shown_at, click_row.position) == (T0, 2)
