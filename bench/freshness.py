"""Freshness: what the speed layer earns. Stale batch model vs. speed-layer fold-in vs. full retrain.

MovieLens-100K, the per-user time split of DESIGN.md (the last ceil(test_share · n_u)
events of each user are test). Each user's test slice is split again in time:

    streamed = the first floor(n_test / 2) test events (>= 1 whenever n_test >= 2),
    held     = the rest; only held events are scored.

Three models, all ranked over the train catalogue, with the user's train and
streamed items excluded from every list (they cannot be hits):

- `stale`:   implicit ALS fitted on train; its own user vectors.
- `speed`:   the same item factors Y; each user with streamed events gets the
             speed layer's fold-in over train + streamed strengths,
             x_u = (YᵀY + Σ_i (c_ui − 1) y_i y_iᵀ + λ_u I)⁻¹ Σ_i c_ui y_i
             (recsys.models.foldin.FoldIn, with the engine's objective). Users without
             streamed events keep their batch vector, as in the speed layer.
- `retrain`: the same engine fitted again on train + streamed.

    recovered_share = (NDCG_speed − NDCG_stale) / (NDCG_retrain − NDCG_stale)

is the share of a nightly retrain's gain that the speed layer delivers in seconds.
A control, `refold_train_only`, folds every user in from their train history alone:
if it matched `speed`, the gain would come from re-solving, not from fresh events.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.quality import engine_params
from jobs.engines import AlsParams, implicit_als
from recsys.evaluation.protocol import EvalSplit, Interactions, evaluate_factors, load_ml100k_events, time_split
from recsys.models.foldin import FoldIn
from recsys.settings import Settings, get_settings

REPORTED = ("ndcg", "recall", "precision", "map")


# --- split -------------------------------------------------------------------------------
def stream_split(test_events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the first floor(n/2) test events (in time order) are streamed, the rest held.

    Time order is the one time_split uses (ts, then item_id, then weight), so a streamed
    event is never later than a held one of the same user; equal timestamps can straddle
    the cut, as they can straddle the train/test cut.
    """
    ordered = test_events.sort_values(["user_id", "ts", "item_id", "weight"], kind="mergesort").reset_index(drop=True)
    by_user = ordered.groupby("user_id", sort=False)
    position = by_user.cumcount().to_numpy()
    size = by_user["user_id"].transform("size").to_numpy()
    is_streamed = position < size // 2
    return ordered[is_streamed].reset_index(drop=True), ordered[~is_streamed].reset_index(drop=True)


@dataclass(frozen=True)
class FreshnessSplit:
    """Train strengths, streamed strengths and held relevant items on the train model's indices.

    `streamed` holds only events on train items: an item new since the batch has no
    factor in the model being compared, so it cannot enter a fold-in here (the speed
    layer skips it in the history the same way until it has folded the item in) and
    cannot be ranked by any of the three models. `touched` marks the users with any
    streamed event, on a known item or not: those the speed layer would re-solve.
    """

    train: Interactions
    streamed: sp.csr_matrix
    held: sp.csr_matrix  # 1.0 = relevant: a held item the user saw neither in train nor streamed
    touched: np.ndarray
    n_streamed_events: int
    n_streamed_skipped: int
    n_held_events: int
    n_held_dropped: int

    @cached_property
    def seen(self) -> sp.csr_matrix:
        """r_ui over train + streamed (strengths add up, as the speed layer's history does)."""
        out = (self.train.matrix + self.streamed).tocsr()
        out.sort_indices()
        return out.astype(np.float32)

    def eval_split(self) -> EvalSplit:
        """The held part as an EvalSplit whose exclude matrix is train + streamed."""
        seen = Interactions(self.train.user_ids, self.train.item_ids, self.seen)
        return EvalSplit(seen, self.held, self.n_held_events, self.n_held_dropped)


def make_freshness_split(events: pd.DataFrame, test_share: float) -> FreshnessSplit:
    """time_split, stream_split of the test part, then matrices on the train ids."""
    train_events, test_events = time_split(events, test_share)
    streamed_events, held_events = stream_split(test_events)
    train = Interactions.from_events(train_events)
    streamed = Interactions.from_events(streamed_events, user_ids=train.user_ids, item_ids=train.item_ids)
    held = Interactions.from_events(held_events, user_ids=train.user_ids, item_ids=train.item_ids)
    touched = np.zeros(train.n_users, dtype=bool)
    rows = train.user_index(streamed_events["user_id"].astype(str).unique())
    touched[rows[rows >= 0]] = True
    seen_bin = ((train.matrix + streamed.matrix) != 0).astype(np.float32)
    held_bin = (held.matrix != 0).astype(np.float32)
    # As in make_split: items already seen (now also the streamed ones) are excluded, so never relevant.
    relevant = (held_bin - held_bin.multiply(seen_bin)).tocsr()
    relevant.eliminate_zeros()
    relevant.sort_indices()
    return FreshnessSplit(
        train=train, streamed=streamed.matrix, held=relevant.astype(np.float32), touched=touched,
        n_streamed_events=len(streamed_events), n_streamed_skipped=streamed.n_dropped,
        n_held_events=len(held_events), n_held_dropped=held.n_dropped,
    )  # fmt: skip


# --- models -------------------------------------------------------------------------------
def speed_user_factors(
    stale_users: np.ndarray, item_factors: np.ndarray, params: AlsParams, history: sp.csr_matrix, touched: np.ndarray
) -> np.ndarray:
    """Batch vectors, with each touched user's row replaced by FoldIn over `history` (train + streamed)."""
    out = np.array(stale_users, dtype=np.float32, copy=True)
    rows = np.flatnonzero(touched)
    if rows.size:
        out[rows] = FoldIn(item_factors, implicit_als.objective(params)).vectors(history[rows])
    return out


def recovered_share(stale: float, speed: float, retrain: float) -> float | None:
    """(speed − stale) / (retrain − stale); None when retraining did not improve on the stale model."""
    gap = retrain - stale
    if not np.isfinite(gap) or gap <= 0:
        return None
    return float((speed - stale) / gap)


def _summary(metrics: dict[str, float], k: int) -> dict[str, float]:
    out = {f"{name}@{k}": metrics[f"{name}@{k}"] for name in REPORTED}
    return {**out, "auc": metrics["auc"], "n_users": metrics["n_users"]}


def measure(events: pd.DataFrame, params: AlsParams, test_share: float = 0.2, k: int = 10) -> dict:
    """Fit stale and retrained models, fold in the speed layer's users, score all three on the held part."""
    fs = make_freshness_split(events, test_share)
    split = fs.eval_split()
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    stale_users, items = implicit_als.fit(fs.train.matrix, params)
    seconds["stale_fit"] = time.perf_counter() - started

    started = time.perf_counter()
    speed_users = speed_user_factors(stale_users, items, params, fs.seen, fs.touched)
    seconds["speed_foldin"] = time.perf_counter() - started

    started = time.perf_counter()
    retrain_users, retrain_items = implicit_als.fit(fs.seen, params)
    seconds["retrain_fit"] = time.perf_counter() - started

    everyone = np.ones(fs.train.n_users, dtype=bool)
    control_users = speed_user_factors(stale_users, items, params, fs.train.matrix, everyone)

    scored = {
        "stale": evaluate_factors(stale_users, items, split, k=k),
        "speed": evaluate_factors(speed_users, items, split, k=k),
        "retrain": evaluate_factors(retrain_users, retrain_items, split, k=k),
        "refold_train_only": evaluate_factors(control_users, items, split, k=k),
    }
    ndcg = f"ndcg@{k}"
    share = recovered_share(scored["stale"][ndcg], scored["speed"][ndcg], scored["retrain"][ndcg])
    return {
        **{name: _summary(m, k) for name, m in scored.items()},
        "recovered_share": share,
        "retrain_beats_stale": share is not None,
        "users": int(scored["stale"]["n_users"]),
        "streamed_events": fs.n_streamed_events,
        "streamed_events_on_new_items": fs.n_streamed_skipped,
        "held_events": fs.n_held_events,
        "held_events_on_new_items": fs.n_held_dropped,
        "touched_users": int(fs.touched.sum()),
        "seconds": {name: round(s, 3) for name, s in seconds.items()},
        "params": {**asdict(params), "engine": implicit_als.NAME, "k": k, "test_share": test_share},
    }


def run(quick: bool, settings: Settings | None = None) -> dict:
    """The freshness comparison on MovieLens-100K with the implicit engine's default parameters."""
    s = settings or get_settings()
    return measure(load_ml100k_events(), engine_params("implicit", s, quick), s.eval_test_share, s.eval_k)


__all__ = ["FreshnessSplit", "make_freshness_split", "measure", "recovered_share", "run", "speed_user_factors"]
