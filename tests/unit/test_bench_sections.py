"""bench.freshness (split, speed-layer vectors, the comparison) and bench.plots, without Spark."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from event_frames import random_events as make_random_events

from bench import freshness, plots
from recsys.evaluation.protocol import evaluate, load_ml100k_events, time_split
from recsys.models.als import FoldIn, ImplicitALS
from recsys.topk import top_k


def small(seed: int = 0) -> ImplicitALS:
    """Small enough for a unit test (a fit takes ~0.1 s); the bench itself uses the model's defaults."""
    return ImplicitALS(ImplicitALS.Params(rank=16, iterations=8, reg=20.0, alpha=1.0, seed=seed))


def streamed(fs: freshness.FreshnessSplit) -> sp.csr_matrix:
    """The streamed strengths alone (train + streamed minus train)."""
    out = (fs.seen.strengths - fs.train.strengths).tocsr()
    out.eliminate_zeros()
    return out


def fitted(fs: freshness.FreshnessSplit) -> ImplicitALS:
    model = small()
    model.fit(fs.train)
    return model


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ml_subset() -> pd.DataFrame:
    """MovieLens-100K's first 400 users (by id): ~44k events, every user with >= 4 test events."""
    events = load_ml100k_events()
    users = sorted(events["user_id"].unique(), key=int)[:400]
    return events[events["user_id"].isin(users)].reset_index(drop=True)


@pytest.fixture(scope="module")
def fsplit(ml_subset: pd.DataFrame) -> freshness.FreshnessSplit:
    return freshness.make_freshness_split(ml_subset, 0.2)


@pytest.fixture(scope="module")
def random_events() -> pd.DataFrame:
    # coarse times: ties inside a user straddle the cut
    return make_random_events(1, n=2000, users=60, items=50, times=30)


# --- the streamed / held split ------------------------------------------------------------
def test_stream_split_takes_the_first_half_of_each_users_test_slice(random_events: pd.DataFrame) -> None:
    _, test = time_split(random_events, 0.3)
    streamed, held = freshness.stream_split(test)
    assert len(streamed) + len(held) == len(test)
    n_test = test.groupby("user_id").size()
    n_streamed = streamed.groupby("user_id").size().reindex(n_test.index, fill_value=0)
    assert (n_streamed == n_test // 2).all()
    assert (n_streamed[n_test >= 2] >= 1).all()
    # The same events, none lost or duplicated.
    key = ["user_id", "item_id", "ts", "weight"]
    both = pd.concat([streamed, held])[key].sort_values(key).reset_index(drop=True)
    assert both.equals(test[key].sort_values(key).reset_index(drop=True))


def test_every_streamed_event_precedes_every_held_event_of_its_user(random_events: pd.DataFrame) -> None:
    _, test = time_split(random_events, 0.3)
    streamed, held = freshness.stream_split(test)
    order = ["ts", "item_id", "weight"]
    last = streamed.sort_values(order).groupby("user_id").tail(1).set_index("user_id")
    first = held.sort_values(order).groupby("user_id").head(1).set_index("user_id")
    common = last.index.intersection(first.index)
    assert len(common) > 20
    for user in common:
        assert tuple(last.loc[user, order]) <= tuple(first.loc[user, order])
        assert last.loc[user, "ts"] <= first.loc[user, "ts"]


def test_single_test_event_is_held_not_streamed() -> None:
    test = pd.DataFrame(
        [("a", "x", 5, 1.0), ("b", "x", 5, 1.0), ("b", "y", 6, 1.0)], columns=["user_id", "item_id", "ts", "weight"]
    )
    streamed, held = freshness.stream_split(test)
    assert streamed[["user_id", "item_id"]].values.tolist() == [["b", "x"]]
    assert sorted(held["user_id"]) == ["a", "b"]


def _within(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    """Every nonzero position of a is a nonzero position of b."""
    pattern = (a != 0).astype(np.int8)
    return (pattern - pattern.multiply(b != 0)).nnz == 0


# --- matrices on the train model's indices -------------------------------------------------
def test_held_relevant_items_were_never_seen(fsplit: freshness.FreshnessSplit) -> None:
    assert fsplit.held.nnz > 0 and streamed(fsplit).nnz > 0
    assert fsplit.held.multiply(fsplit.seen.strengths != 0).nnz == 0
    assert fsplit.held.multiply(fsplit.train.strengths != 0).nnz == 0
    # The exclude matrix handed to evaluation holds train and streamed items.
    exclude = fsplit.eval_split().train.strengths
    assert _within(streamed(fsplit), exclude) and _within(fsplit.train.strengths, exclude)
    assert fsplit.touched.sum() == np.unique(streamed(fsplit).nonzero()[0]).size == 400


def test_no_streamed_item_is_recommended(fsplit: freshness.FreshnessSplit) -> None:
    model = fitted(fsplit)
    contexts = freshness.realtime_contexts(model, fsplit)
    speed = model.user_vectors(contexts)
    split = fsplit.eval_split()
    rows = np.arange(fsplit.train.n_users)
    recommended, _ = top_k(speed[rows], model.item_factors, 10, exclude=split.train.strengths[rows])
    fresh = streamed(fsplit)
    for r in rows:
        assert not set(recommended[r]) & set(fresh[r].indices)
    # Without the exclusion, streamed items do come up (the folded vector leans towards them):
    # so the check above is not vacuous.
    unfiltered, _ = top_k(speed[rows], model.item_factors, 10)
    assert sum(len(set(unfiltered[r]) & set(fresh[r].indices)) for r in rows) > 0


# --- real-time vectors ------------------------------------------------------------------------
def test_realtime_vectors_replace_only_touched_users(fsplit: freshness.FreshnessSplit) -> None:
    model = fitted(fsplit)
    touched = np.zeros(fsplit.train.n_users, dtype=bool)
    touched[::3] = True
    fs = freshness.FreshnessSplit(**{**fsplit.__dict__, "touched": touched})
    speed = model.user_vectors(freshness.realtime_contexts(model, fs))
    np.testing.assert_array_equal(speed[~touched], model.user_factors[~touched])
    expected = FoldIn(model.item_factors, model.objective).vectors(fsplit.seen.strengths[np.flatnonzero(touched)])
    np.testing.assert_allclose(speed[touched], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(speed[touched], model.user_factors[touched], atol=1e-3)


def test_folding_in_the_train_history_alone_reproduces_the_batch_vectors(fsplit: freshness.FreshnessSplit) -> None:
    # Same objective as the engine: the re-solve alone changes little, so any gain of `realtime` comes from the events.
    model = fitted(fsplit)
    refold = model.update_users(fsplit.train.contexts(range(fsplit.train.n_users)))
    users = model.user_factors
    cosine = (refold * users).sum(1) / (np.linalg.norm(refold, axis=1) * np.linalg.norm(users, axis=1))
    assert np.median(cosine) > 0.99


# --- the comparison -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_realtime_beats_stale_and_recovered_share_is_finite(fsplit: freshness.FreshnessSplit, seed: int) -> None:
    out = freshness.measure(lambda: small(seed), fsplit, k=10)
    for view in ("stale", "realtime", "retrain"):
        assert set(out[view]) >= {"ndcg@10", "recall@10"} and out[view]["n_users"] == 400
    stale, realtime = out["stale"]["ndcg@10"], out["realtime"]["ndcg@10"]
    assert realtime > stale + 0.003
    assert out["recovered_share"] is not None and math.isfinite(out["recovered_share"])
    assert out["recovered_share"] > 0


def test_the_realtime_gain_comes_from_the_streamed_events(fsplit: freshness.FreshnessSplit) -> None:
    # Control: re-solving every user from their train history alone stays near stale.
    model = fitted(fsplit)
    split = fsplit.eval_split()
    train_view = fsplit.train.contexts(range(fsplit.train.n_users))
    for ctx, state in zip(train_view, model.update_users(train_view), strict=True):
        ctx.state = state
    stale = evaluate(model, split, contexts=fsplit.train.contexts(range(fsplit.train.n_users)))["ndcg@10"]
    refold = evaluate(model, split, contexts=train_view)["ndcg@10"]
    realtime = evaluate(model, split, contexts=freshness.realtime_contexts(model, fsplit))["ndcg@10"]
    assert abs(refold - stale) < (realtime - stale) / 2


def test_recovered_share_guards_a_retrain_that_did_not_help() -> None:
    assert freshness.recovered_share(0.10, 0.13, 0.14) == pytest.approx(0.75)
    assert freshness.recovered_share(0.10, 0.13, 0.10) is None
    assert freshness.recovered_share(0.10, 0.13, 0.09) is None
    assert freshness.recovered_share(0.10, 0.13, float("nan")) is None


# --- plots --------------------------------------------------------------------------------------
QUALITY = {
    "ordered": {
        "popularity": {"ndcg@10": 0.12, "precision@10": 0.11, "recall@10": 0.12},
        "implicit_lib": {"ndcg@10": 0.20, "precision@10": 0.18, "recall@10": 0.20},
    },
    "params": {"k": 10, "seeds": [0], "reference": "implicit_als"},
}
FRESHNESS = {
    "implicit_als": {
        "stale": {"ndcg@10": 0.127, "recall@10": 0.139},
        "realtime": {"ndcg@10": 0.138, "recall@10": 0.150},
        "retrain": {"ndcg@10": 0.141, "recall@10": 0.152},
        "recovered_share": None,
    },
    "split": {"k": 10},
}


def _assert_pngs(paths: list[Path]) -> None:
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_write_plots_draws_only_the_sections_present(tmp_path: Path) -> None:
    paths = plots.write_plots({"quality": QUALITY, "meta": {"cores": 2}}, tmp_path / "a")
    assert [p.name for p in paths] == ["quality.png"]
    _assert_pngs(paths)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["quality.png"]


def test_write_plots_all_sections(tmp_path: Path) -> None:
    results = {
        "quality": QUALITY,
        "freshness": FRESHNESS,
        "batch": {
            "implicit": {"1000000": {"seconds": 88.4}},
            "spark_als": {"1000000": {"seconds": 142.2}, "10000000": {"seconds": 440.4}},
        },
        "serving": {"modes": {"exact/2": {"max_requests_per_s": 1500, "p99_ms": 9.5, "p50_ms": 3.0}}},
    }
    paths = plots.write_plots(results, tmp_path)
    assert [p.name for p in paths] == ["quality.png", "freshness.png", "batch.png", "serving.png"]
    _assert_pngs(paths)


def test_write_plots_tolerates_missing_or_empty_sections(tmp_path: Path) -> None:
    assert plots.write_plots({}, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
    empty = {"quality": {}, "serving": {"modes": {}}, "batch": {}, "freshness": {"split": {"k": 10}}}
    assert plots.write_plots(empty, tmp_path / "empty") == []
