"""The evaluation protocol: time split, interaction matrices, baselines, and ALS vs. popularity on MovieLens-100K."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from event_frames import random_events as make_random_events

from recsys.evaluation.protocol import (
    dataset_from_events,
    evaluate,
    load_ml100k_events,
    make_split,
    sample_users,
    time_split,
)
from recsys.models.als import ImplicitALS, fit_implicit
from recsys.models.base import Recommender
from recsys.models.popularity import Popularity


class FixedScores(Recommender):
    """A toy recommender: the same given scores for every user."""

    name = "fixed"
    Params = Popularity.Params

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.scores = np.asarray(scores, np.float32)
        self.n_items = len(scores)

    def fit(self, data, spark=None) -> None:
        pass

    def score(self, users, new=None):
        return np.broadcast_to(self.scores, (len(users), self.n_items)).copy()  # never asked for new items

    def save(self, directory):
        return {}

    @classmethod
    def load(cls, directory, params, data):
        raise NotImplementedError


def evaluate_popularity(split, **kwargs):
    model = Popularity()
    model.fit(split.train)
    return evaluate(model, split, **kwargs)


# Best of a small grid on this split (factors 32/64/128, λ 0.01..100, alpha 0.25..5); see the module's report.
ALS_PARAMS = {"rank": 64, "reg": 20.0, "alpha": 1.0, "iterations": 15}


def _events(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "weight"])


@pytest.fixture(scope="module")
def random_events() -> pd.DataFrame:
    # coarse times: ties inside a user straddle the cut
    return make_random_events(0, n=3000, users=120, items=80, times=50)


# --- time_split ------------------------------------------------------------------
def test_time_split_takes_the_last_share_of_each_user(random_events: pd.DataFrame) -> None:
    train, test = time_split(random_events, 0.2)
    assert len(train) + len(test) == len(random_events)
    n_train = train.groupby("user_id").size()
    n_test = test.groupby("user_id").size().reindex(n_train.index, fill_value=0)
    total = n_train + n_test
    expected = np.minimum(np.ceil(np.round(total * 0.2, 9)), total - 1).astype(int)
    assert (n_test == expected).all()
    # Every test event is at or after every train event of the same user.
    last_train = train.groupby("user_id")["ts"].max()
    first_test = test.groupby("user_id")["ts"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()


def test_time_split_ceil_is_exact_at_multiples() -> None:
    # 0.2 · 15 is 3.0000000000000004 in floating point: still 3 test events, not 4.
    events = _events([("u", f"i{j:02d}", j, 1.0) for j in range(15)])
    _, test = time_split(events, 0.2)
    assert test["item_id"].tolist() == ["i12", "i13", "i14"]


def test_time_split_small_users_stay_in_train() -> None:
    events = _events([("a", "x", 1, 1.0), ("b", "x", 1, 1.0), ("b", "y", 2, 1.0)])
    train, test = time_split(events, 0.2)
    assert sorted(train["user_id"]) == ["a", "b"]
    assert test[["user_id", "item_id"]].values.tolist() == [["b", "y"]]


def test_time_split_breaks_time_ties_by_item_id() -> None:
    events = _events([("u", "b", 5, 1.0), ("u", "c", 5, 1.0), ("u", "a", 5, 1.0), ("u", "z", 1, 1.0)])
    train, test = time_split(events, 0.25)
    assert train["item_id"].tolist() == ["z", "a", "b"]
    assert test["item_id"].tolist() == ["c"]


def test_time_split_is_deterministic_under_row_order(random_events: pd.DataFrame) -> None:
    shuffled = random_events.sample(frac=1.0, random_state=7)
    for a, b in zip(time_split(random_events), time_split(shuffled), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_time_split_accepts_datetimes() -> None:
    events = _events([("u", "a", 0, 1.0), ("u", "b", 0, 1.0)])
    events["ts"] = pd.to_datetime(["2024-01-02", "2024-01-01"])
    _, test = time_split(events, 0.5)
    assert test["item_id"].tolist() == ["a"]


def test_time_split_rejects_bad_share(random_events: pd.DataFrame) -> None:
    with pytest.raises(ValueError):
        time_split(random_events, 1.0)


# --- datasets and the split --------------------------------------------------------
def test_datasets_sum_weights_and_share_id_orders() -> None:
    events = _events([("u1", "a", 1, 1.0), ("u1", "a", 2, 3.0), ("u2", "b", 3, 5.0)])
    data, dropped = dataset_from_events(events)
    assert data.user_ids.tolist() == ["u1", "u2"] and data.item_ids.tolist() == ["a", "b"] and dropped == 0
    assert data.strengths.dtype == np.float32
    assert data.strengths.toarray().tolist() == [[4.0, 0.0], [0.0, 5.0]]
    # The ordered log: user 0's two events oldest first, then user 1's.
    assert data.events.user.tolist() == [0, 0, 1] and data.events.ts_ms.tolist() == [1, 2, 3]
    assert data.context(0).recent.tolist() == [0, 0] and data.context(1).items.tolist() == [1]

    other = _events([("u2", "a", 4, 1.0), ("u3", "a", 4, 1.0), ("u1", "new", 4, 1.0)])
    shared, dropped = dataset_from_events(other, user_ids=data.user_ids, item_ids=data.item_ids)
    assert shared.strengths.shape == (2, 2) and dropped == 2
    assert shared.strengths.toarray().tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_make_split_relevant_items_exclude_seen_and_unknown_items() -> None:
    events = _events(
        [
            ("u", "a", 1, 1.0),
            ("u", "b", 2, 1.0),
            ("u", "c", 3, 1.0),
            ("v", "c", 1, 1.0),
            ("v", "a", 2, 1.0),  # test for v: not seen before → relevant
            ("u", "a", 4, 1.0),  # test for u: seen in train → not relevant
            ("u", "new", 5, 1.0),  # test for u: unknown to train → dropped
        ]
    )
    split = make_split(events, test_share=0.4)
    tr = split.train
    assert tr.user_ids.tolist() == ["u", "v"] and tr.item_ids.tolist() == ["a", "b", "c"]
    assert split.test.toarray().tolist() == [[0, 0, 0], [1, 0, 0]]
    assert split.n_test_events == 3 and split.n_test_events_dropped == 1


def test_popularity_counts_distinct_users() -> None:
    events = _events([("u", "a", 1, 5.0), ("u", "a", 2, 5.0), ("v", "b", 1, 1.0), ("w", "b", 1, 1.0)])
    assert dataset_from_events(events)[0].popularity().tolist() == [1.0, 2.0]


def test_evaluate_popularity_and_factors_on_a_tiny_split() -> None:
    # With test_share 0.25 each user's last event is test. Train popularity: a 3, b 2, c 1, d 1.
    rows = [("u", "a", 1, 1.0), ("u", "b", 2, 1.0), ("u", "c", 9, 1.0)]  # test u → c
    rows += [("v", "a", 1, 1.0), ("v", "b", 9, 1.0)]  # test v → b
    rows += [("w", "a", 1, 1.0), ("w", "b", 2, 1.0), ("w", "c", 3, 1.0), ("w", "e", 9, 1.0)]  # e unknown: dropped
    rows += [("x", "d", 1, 1.0)]  # one event: train only
    split = make_split(_events(rows), test_share=0.25)
    assert split.train.item_ids.tolist() == ["a", "b", "c", "d"] and split.n_test_events_dropped == 1
    pop = evaluate_popularity(split, k=1)
    # u has seen a, b → c (ties with d, lower index first): hit; v has seen a → b: hit. w has nothing to find.
    assert pop["precision@1"] == 1.0 and pop["n_users"] == 2
    assert pop["coverage@1"] == pytest.approx(2 / 4)
    # A model that scores only item d: both get d, no hits.
    out = evaluate(FixedScores(np.array([0.0, 0.0, 0.0, 1.0])), split, k=1)
    assert out["precision@1"] == 0.0 and out["coverage@1"] == pytest.approx(1 / 4)
    # AUC: u's c (0) vs negative d (1) → 0; v's b (0) vs c (0, tie) and d (1) → 0.25.
    assert out["auc"] == pytest.approx(0.125)
    with pytest.raises(ValueError):
        evaluate(FixedScores(np.zeros(2)), split, k=1)  # scores for 2 items on a 4-item split


def test_sample_users_is_seeded_and_only_takes_users_with_test_items() -> None:
    rows = [r for r in range(12) if r != 3]
    test = sp.csr_matrix((np.ones(len(rows)), (rows, np.zeros(len(rows), int))), shape=(12, 5))
    all_rows = sample_users(test)
    assert all_rows.tolist() == rows
    a, b = sample_users(test, 4, seed=1), sample_users(test, 4, seed=1)
    assert a.tolist() == b.tolist() and a.size == 4 and set(a) <= set(rows)


# --- the implicit library and MovieLens-100K ----------------------------------------------
@pytest.fixture(scope="module")
def ml100k_split():
    return make_split(load_ml100k_events())


def test_ml100k_events_and_split(ml100k_split) -> None:
    events = load_ml100k_events()
    assert len(events) == 100_000 and set(events["weight"]) == {1.0, 3.0, 5.0}
    assert events["ts"].dtype == np.int64
    split = ml100k_split
    assert split.train.n_users == 943 and len(split.train.events) + split.n_test_events == 100_000
    # Every user has >= 20 ratings, so every user is evaluated.
    assert (np.diff(split.test.indptr) > 0).sum() == 943


def test_implicit_als_returns_float32_factors_without_blas_warnings(ml100k_split) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        users, items = fit_implicit(ml100k_split.train.strengths, 8, 1.0, 1.0, 2)
    assert users.shape == (943, 8) and items.shape == (ml100k_split.train.n_items, 8)
    assert users.dtype == items.dtype == np.float32
    again, _ = fit_implicit(ml100k_split.train.strengths, 8, 1.0, 1.0, 2)
    assert np.isfinite(users).all() and again.shape == users.shape


def test_implicit_als_clearly_beats_popularity_on_ml100k(ml100k_split) -> None:
    pop = evaluate_popularity(ml100k_split)
    model = ImplicitALS(ImplicitALS.Params(**ALS_PARAMS, conjugate_gradient=True))
    model.fit(ml100k_split.train)
    als = evaluate(model, ml100k_split)
    print(f"\npopularity: {pop}\nimplicit ALS {ALS_PARAMS}: {als}")
    assert pop["n_users"] == als["n_users"] == 943
    # Popularity on this per-user time split: P@10 ≈ 0.107, NDCG@10 ≈ 0.119.
    assert 0.08 < pop["precision@10"] < 0.14
    assert als["ndcg@10"] >= 1.3 * pop["ndcg@10"]
    assert als["precision@10"] >= 1.3 * pop["precision@10"]
    assert als["auc"] > pop["auc"] and als["coverage@10"] > pop["coverage@10"]
    for value in als.values():
        assert not math.isnan(value)


def test_sampled_evaluation_is_seeded(ml100k_split) -> None:
    a = evaluate_popularity(ml100k_split, max_users=100, seed=3)
    b = evaluate_popularity(ml100k_split, max_users=100, seed=3)
    assert a == b and a["n_users"] == 100
