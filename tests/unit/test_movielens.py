"""MovieLens-100K loader: read from the recbole wheel, turned into valid, pseudonymised, time-ordered events."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import pandas as pd
import pytest

from recsys.contracts.events import Event, validate_event
from recsys.data import movielens
from recsys.data.movielens import (
    N_ITEMS,
    N_RATINGS,
    N_USERS,
    RATING_TO_EVENT,
    iter_events,
    load_items,
    load_ratings,
    ml100k_dir,
)
from recsys.privacy import is_pseudonym, pseudonymise

KEY = b"k" * 32


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return load_ratings()


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(iter_events(key=KEY))


def test_data_is_found_in_the_wheel_without_importing_recbole() -> None:
    folder = ml100k_dir()
    assert (folder / "ml-100k.inter").is_file()
    assert "site-packages" in str(folder) or "dist-packages" in str(folder)
    assert "recbole" not in sys.modules  # importing it would pull in torch


def test_missing_recbole_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install recbole"):
        movielens.ml100k_dir()


def test_ratings_have_the_published_sizes_and_types(ratings: pd.DataFrame) -> None:
    assert list(ratings.columns) == ["user_id", "item_id", "rating", "ts_ms"]
    assert len(ratings) == N_RATINGS == 100_000
    assert ratings["user_id"].nunique() == N_USERS == 943
    assert ratings["item_id"].nunique() == N_ITEMS == 1_682
    assert isinstance(ratings["user_id"].iloc[0], str) and isinstance(ratings["item_id"].iloc[0], str)
    assert ratings["ts_ms"].dtype == "int64"
    assert set(ratings["rating"]) == {1, 2, 3, 4, 5}
    # Collected Sept 1997 - April 1998: the ms conversion must land there.
    years = pd.to_datetime(ratings["ts_ms"], unit="ms").dt.year
    assert set(years) == {1997, 1998}


def test_items_cover_every_rated_item(ratings: pd.DataFrame) -> None:
    items = load_items()
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    assert len(items) == N_ITEMS and items["item_id"].is_unique
    assert set(items["item_id"]) == set(ratings["item_id"])
    assert all(isinstance(g, list) and g for g in items["genres"])
    toy_story = items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story" and toy_story["year"] == "1995"
    assert toy_story["genres"][0] == "Animation"  # the category
    assert items.set_index("item_id").loc["267", "year"] is None  # 'unkonwn' in the file


def test_every_event_validates(events: list[Event]) -> None:
    assert len(events) == N_RATINGS
    results = [validate_event(e.to_wire()) for e in events]
    rejected = [r for r in results if not isinstance(r, Event)]
    assert not rejected, rejected[:3]


def test_event_ids_are_unique_and_deterministic(events: list[Event]) -> None:
    assert len({e.event_id for e in events}) == N_RATINGS
    again = iter_events(key=KEY)
    assert [e.event_id for e in events[:50]] == [next(again).event_id for _ in range(50)]


def test_user_ids_are_pseudonyms_of_the_raw_ids(events: list[Event], ratings: pd.DataFrame) -> None:
    assert all(is_pseudonym(e.user_id) for e in events)
    expected = {pseudonymise(u, KEY) for u in ratings["user_id"].unique()}
    assert {e.user_id for e in events} == expected
    first = events[0]
    raw_user = first.event_id.split("-")[1]
    assert first.user_id == pseudonymise(raw_user, KEY)


def test_events_are_in_time_order_with_deterministic_ties(events: list[Event], ratings: pd.DataFrame) -> None:
    ts = [e.ts_ms for e in events]
    assert ts == sorted(ts)
    expected = ratings.sort_values(["ts_ms", "user_id", "item_id"])
    ids = [f"ml100k-{u}-{i}" for u, i in zip(expected["user_id"], expected["item_id"], strict=True)]
    assert [e.event_id for e in events] == ids


def test_rating_mapping_is_applied(events: list[Event], ratings: pd.DataFrame) -> None:
    rating_of = {f"ml100k-{u}-{i}": r for u, i, r in ratings[["user_id", "item_id", "rating"]].itertuples(False)}
    assert all(e.event_type == RATING_TO_EVENT[rating_of[e.event_id]] for e in events)
    counts = Counter(e.event_type for e in events)
    by_rating = ratings["rating"].value_counts()
    assert counts["purchase"] == by_rating[5]
    assert counts["add_to_cart"] == by_rating[4]
    assert counts["view"] == by_rating[[1, 2, 3]].sum()
    assert {e.ts_ms for e in events} <= set(ratings["ts_ms"])


def test_a_custom_mapping_can_be_passed() -> None:
    first = next(iter_events(key=KEY, mapping=dict.fromkeys(range(1, 6), "view")))
    assert first.event_type == "view"
