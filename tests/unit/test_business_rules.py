"""Business rules: unavailable items never in an answer, several categories, the caller's exclusions, the
per-category cap (serving model and follower, no Kafka), and item updates in the event contract."""

import json
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serving_fast import StaticFollower
from test_serving_model import RANK, artifact

from recsys import protocol
from recsys.contracts.events import Event, validate_event
from recsys.protocol import AvailabilityMessage, VectorUpdate
from recsys.settings import Settings
from serving.api import create_app
from serving.filters import capped
from serving.follower import ModelFollower
from serving.model import ServingModel
from speed_layer.service import availability_message

VERSION = "m20260101T000000000000"
N_ITEMS = 40
CATEGORY_OF = {f"i{j}": ["a", "b", "c", None][j % 4] for j in range(N_ITEMS)} | {"fresh": "a"}
CATALOG = {item: (f"Item {item}", category) for item, category in CATEGORY_OF.items()}
ITEMS = sorted(CATEGORY_OF)


def serving_model() -> ServingModel:
    m = ServingModel(artifact(), CATALOG, Settings())
    m.apply(VectorUpdate(model_version=VERSION, kind="item", id="fresh", vector=[0.3] * RANK))
    m.apply(
        VectorUpdate(
            model_version=VERSION,
            kind="user",
            id="u1",
            vector=[1.0, -1.0, 0.5, 0.0],
            strengths={"i5": 1.0},
            event_types={"i5": ["view"]},
            recent=[("i5", "view", 1)],
        )
    )
    return m


MODEL = serving_model()


def avail(item: str, available: bool, offset: int) -> bytes:
    message = AvailabilityMessage(
        item_id=item, available=available, state="item_back" if available else "item_hidden", partition=0, offset=offset
    )
    return protocol.encode(message)[1]


def capacity(k: int, categories, excluded: set[str], cap: int | None) -> int:
    """How long a full answer can be: the eligible items, at most `cap` per category (uncategorised: uncapped)."""
    eligible = [i for i in ITEMS if i not in excluded and (categories is None or CATEGORY_OF[i] in categories)]
    per = Counter(CATEGORY_OF[i] for i in eligible)
    return min(k, sum(n if c is None or cap is None else min(n, cap) for c, n in per.items()))


changes = st.lists(st.tuples(st.sampled_from(ITEMS), st.booleans(), st.booleans()), max_size=30)
queries = st.tuples(
    st.sampled_from(["u0", "u1", "u2", "u3", "stranger"]),
    st.integers(1, N_ITEMS),
    st.booleans(),
    st.none() | st.sets(st.sampled_from(["a", "b", "c"]), min_size=1).map(sorted),
    st.lists(st.sampled_from(ITEMS), max_size=8),
    st.none() | st.integers(1, 6),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=changes, asks=st.lists(queries, min_size=1, max_size=4), item=st.sampled_from(ITEMS))
def test_no_answer_ever_holds_an_unavailable_item(changes, asks, item):
    m = MODEL
    m.set_unavailable(())
    follower = ModelFollower(Settings(), loader=lambda path: m)
    follower.current = m
    newest: dict[str, tuple[int, bool]] = {}
    for offset, (changed, available, replayed) in enumerate(changes, start=100):
        # A replayed (older) item update must not undo a newer one.
        at = offset - 100 if replayed else offset
        follower.handle(avail(changed, available, at))
        if changed not in newest or at >= newest[changed][0]:
            newest[changed] = (at, available)
    unavailable = {i for i, (_, ok) in newest.items() if not ok}
    assert m.unavailable.ids == unavailable

    prepared = [m.prepare(u, k, seen, cats, exclude=ex, max_per_category=cap) for u, k, seen, cats, ex, cap in asks]
    for (_, k, exclude_seen, categories, exclude, cap), ranked in zip(asks, m.answer(prepared), strict=True):
        got = ranked.item_ids
        assert not unavailable & set(got) and not set(exclude) & set(got) and len(set(got)) == len(got)
        if categories is not None:
            assert {CATEGORY_OF[i] for i in got} <= set(categories)
        if cap is not None:
            assert max(Counter(CATEGORY_OF[i] for i in got if CATEGORY_OF[i]).values(), default=0) <= cap
        full = capacity(k, categories, unavailable | set(exclude), cap)
        # Short only when the items are: without the user's own exclusions, exactly as long as possible.
        assert len(got) == full if not exclude_seen else len(got) <= full
    for listing in (m.popular(10), m.popular(10, ["a", "c"]), m.similar(item, 10), m.bought_together(item, 10)):
        assert not unavailable & set(listing.item_ids)
    assert len(m.popular(N_ITEMS).item_ids) == capacity(N_ITEMS, None, unavailable, None)


def test_the_cap_keeps_the_best_items_of_each_category_in_rank_order():
    m = serving_model()
    ranking = m.recommend("u0", N_ITEMS).item_ids  # every eligible item, best first
    counts: dict[str, int] = {}
    want = [ranking[n] for n in capped([CATEGORY_OF[i] for i in ranking], 2, 10, counts)]
    got = m.recommend("u0", 10, max_per_category=2).item_ids
    assert got == want and Counter(CATEGORY_OF[i] for i in got)[None] >= 4  # uncategorised: not capped
    # One category, capped at 2: two items, not a list topped up with others.
    assert len(m.recommend("u0", 10, category="a", max_per_category=2).item_ids) == 2
    assert len(m.recommend("stranger", 10, category=["a", "b"], max_per_category=3).item_ids) == 6


def test_exclusions_and_several_categories_filter_the_same_ranking():
    m = serving_model()
    ranking = m.recommend("u2", N_ITEMS, exclude_seen=False).item_ids
    leave_out = [*ranking[:3], "no-such-item"]
    assert m.recommend("u2", 5, exclude_seen=False, exclude=leave_out).item_ids == ranking[3:8]
    both = m.recommend("u2", 8, exclude_seen=False, category=["A", "c"]).item_ids  # any case, like one category
    assert both == [i for i in ranking if CATEGORY_OF[i] in ("a", "c")][:8]
    assert (
        m.recommend("u2", 8, exclude_seen=False, category="a").item_ids
        == [i for i in ranking if CATEGORY_OF[i] == "a"][:8]
    )


def test_availability_survives_a_model_swap_and_a_replayed_update(tmp_path):
    (tmp_path / VERSION).mkdir()
    (tmp_path / VERSION / "manifest.json").write_text("{}")
    first = serving_model()
    follower = ModelFollower(Settings(), loader=lambda path: serving_model())
    follower.current = first
    best = first.recommend("u0", 1).item_ids[0]
    follower.handle(avail(best, False, 7))
    assert best not in first.recommend("u0", N_ITEMS).item_ids
    follower.handle(avail(best, True, 3))  # replayed from before the model's offsets: older, ignored
    assert best not in first.recommend("u0", N_ITEMS).item_ids
    follower._swap(str(tmp_path / VERSION))  # a new model (or a restarted server reading the topic) starts with it
    assert follower.current is not first and best not in follower.current.recommend("u0", N_ITEMS).item_ids
    follower.handle(avail(best, True, 8))
    assert follower.current.recommend("u0", 1).item_ids == [best]
    # An item hidden before the model knows it stays out once the speed layer folds it in.
    follower.handle(avail("later", False, 9))
    assert follower.current.recommend("u0", 3).source == "batch"  # answered before the item exists
    strong = (np.asarray(first.model.user_vectors([first.context("u0")])[0]) * 100).tolist()
    follower.current.apply(VectorUpdate(model_version=VERSION, kind="item", id="later", vector=strong))
    assert "later" not in follower.current.recommend("u0", N_ITEMS + 2).item_ids
    assert "later" not in follower.current.popular(N_ITEMS + 2).item_ids
    follower.handle(avail("later", True, 10))
    assert follower.current.recommend("u0", 1).item_ids == ["later"]


def test_item_updates_are_events_but_not_interactions():
    s = Settings()
    raw = {"event_id": "e1", "user_id": "feed", "item_id": "i3", "event_type": "item_sold_out", "ts": 1_700_000_000_000}
    event = validate_event(json.dumps(raw), s, require_pseudonym=False)
    assert isinstance(event, Event) and event.key() == b"item:i3" and "item_sold_out" not in s.event_weights
    for extra in ({"price": 3.0}, {"quantity": 2}, {"session_id": "s"}):
        assert validate_event(json.dumps(raw | extra), s, require_pseudonym=False).reason == "invalid_field"
    assert validate_event(json.dumps(raw | {"event_type": "item_gone"}), s, require_pseudonym=False).reason == (
        "unknown_event_type"
    )
    message = availability_message(event.item_id, event.event_type, partition=2, offset=41, produced_ms=5)
    assert (message.available, message.state, message.partition, message.offset) == (False, "item_sold_out", 2, 41)
    assert protocol.key_of(message) == b"AVAIL:i3" and protocol.decode(protocol.encode(message)[1]) == message
    back = validate_event(json.dumps(raw | {"event_type": "item_back"}), s, require_pseudonym=False)
    assert isinstance(back, Event) and availability_message(back.item_id, back.event_type, 2, 42, 6).available


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    s = Settings(
        state_dir=tmp_path_factory.mktemp("rules"),
        pseudonym_key="k" * 40,
        serving_write_token="t" * 32,
        kafka_bootstrap="127.0.0.1:1",
    )
    model = serving_model()
    with TestClient(create_app(s, StaticFollower(model))) as c:
        yield c, model


def test_the_route_takes_repeated_categories_exclusions_and_the_cap(client):
    c, model = client
    user = "u0"
    r = c.get(f"/recommend/{user}?k=6&category=a&category=B&max_per_category=2")
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert len(got) == 4 and Counter(CATEGORY_OF[i] for i in got) == {"a": 2, "b": 2}
    first = got[0]
    r = c.get(f"/recommend/{user}?k=6&category=a&category=b&exclude={first}&exclude=i2")
    assert {i["item_id"] for i in r.json()["items"]}.isdisjoint({first, "i2"})
    model.set_available(first, False)
    try:
        assert first not in [i["item_id"] for i in c.get(f"/recommend/{user}?k=40").json()["items"]]  # fast path
    finally:
        model.set_available(first, True)
    assert c.get(f"/recommend/{user}?category=a&category=nope").status_code == 422
    assert c.get(f"/recommend/{user}?max_per_category=0").status_code == 422
    spec = c.get("/openapi.json").json()["paths"]["/recommend/{user_id}"]["get"]["parameters"]
    assert {"category", "exclude", "max_per_category"} <= {p["name"] for p in spec}


def test_item_ids_in_the_exclusion_list_are_checked(client):
    c, _ = client
    r = c.get("/recommend/u0?exclude=a%00b")
    assert r.status_code == 422 and "query.exclude: must not contain control characters" in r.json()["detail"]
