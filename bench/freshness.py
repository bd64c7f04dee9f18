"""Freshness: what the real-time path earns, per recommender. Stale batch model vs real time vs full retrain.

MovieLens-100K, the per-user time split (the last ceil(test_share · n_u) events of each
user are test). Each user's test slice is split again in time:

    streamed = the first floor(n_test / 2) test events (>= 1 whenever n_test >= 2),
    held     = the rest; only held events are scored.

For every recommender, three views, all ranked over the train items, with the user's
train and streamed items excluded from every list (they cannot be hits):

- `stale`:    fitted on train; each user as they were at the split.
- `realtime`: the same fitted model; each user's history and latest events include the
              streamed events, and stateful models update the user through their real-time
              path (`Recommender.update_users`: ALS's exact fold-in), as the speed layer does.
- `retrain`:  the same recommender fitted again on train + streamed.

    recovered_share = (NDCG_realtime − NDCG_stale) / (NDCG_retrain − NDCG_stale)

is the share of a nightly retrain's gain the real-time path delivers in seconds, like for
like; `vs_als_retrain` divides the same gain by the ALS retrain's gain instead.
This is the protocol run in one process (the fold-in code is the speed layer's); the
`speed` section measures the running speed layer over Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import registry
from recsys.data.inputs import Dataset, UserContext
from recsys.evaluation.protocol import (
    EvalSplit,
    dataset_from_events,
    evaluate,
    load_ml100k_events,
    order_events,
    time_split,
)
from recsys.models.base import Recommender
from recsys.models.capabilities import updates_users
from recsys.settings import Settings, get_settings

REPORTED = ("ndcg", "recall", "precision", "map")
REFERENCE = "implicit_als"


# --- split -------------------------------------------------------------------------------
def stream_split(test_events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the first floor(n/2) test events (in the protocol's order) are streamed, the rest held.

    A streamed event is never later than a held one of the same user; equal timestamps
    can straddle the cut, as they can straddle the train/test cut.
    """
    ordered = order_events(test_events)
    by_user = ordered.groupby("user_id", sort=False)
    position = by_user.cumcount().to_numpy()
    size = by_user["user_id"].transform("size").to_numpy()
    is_streamed = position < size // 2
    return ordered[is_streamed].reset_index(drop=True), ordered[~is_streamed].reset_index(drop=True)


@dataclass(frozen=True)
class FreshnessSplit:
    """Train data, train + streamed data on the same positions, and the held relevant items.

    Streamed events on items unknown to train are left out (no model fitted on train can
    use them; the speed layer skips them the same way until it has folded the item in).
    `touched` marks the users with any streamed event: those the speed layer would update.
    """

    train: Dataset
    seen: Dataset  # train + streamed: the realtime view, and what the retrain fits on
    held: sp.csr_matrix  # 1.0 = relevant: a held item the user saw neither in train nor streamed
    touched: np.ndarray
    n_streamed_events: int
    n_streamed_skipped: int
    n_held_events: int
    n_held_dropped: int

    def eval_split(self) -> EvalSplit:
        """The held part as an EvalSplit whose exclusions are train + streamed."""
        return EvalSplit(self.seen, self.held, self.n_held_events, self.n_held_dropped, pd.DataFrame())


def make_freshness_split(
    events: pd.DataFrame, test_share: float, event_types: list[str] | None = None
) -> FreshnessSplit:
    train_events, test_events = time_split(events, test_share)
    streamed_events, held_events = stream_split(test_events)
    train, _ = dataset_from_events(train_events, event_types=event_types)
    types = train.event_types
    both = pd.concat([train_events, streamed_events], ignore_index=True)
    seen, skipped = dataset_from_events(both, user_ids=train.user_ids, item_ids=train.item_ids, event_types=types)
    held, dropped = dataset_from_events(
        held_events, user_ids=train.user_ids, item_ids=train.item_ids, event_types=types
    )
    touched = np.zeros(train.n_users, dtype=bool)
    rows = pd.Index(train.user_ids).get_indexer(streamed_events["user_id"].astype(str).unique())
    touched[rows[rows >= 0]] = True
    seen_bin = (seen.strengths != 0).astype(np.float32)
    held_bin = (held.strengths != 0).astype(np.float32)
    # As in make_split: items already seen (now also the streamed ones) are excluded, so never relevant.
    relevant = (held_bin - held_bin.multiply(seen_bin)).tocsr()
    relevant.eliminate_zeros()
    relevant.sort_indices()
    return FreshnessSplit(
        train, seen, relevant.astype(np.float32), touched, len(streamed_events), skipped, len(held_events), dropped
    )


def realtime_contexts(model: Recommender, fs: FreshnessSplit) -> list[UserContext]:
    """Every user as the real-time path sees them: history and latest events with the streamed ones; stateful
    models update the touched users exactly as the speed layer does (untouched users keep their batch state)."""
    contexts = fs.seen.contexts(range(fs.seen.n_users), model.recent_events)
    rows = np.flatnonzero(fs.touched)
    if updates_users(model) and rows.size:
        states = model.update_users([contexts[r] for r in rows])
        if states is not None:
            for r, state in zip(rows, states, strict=True):
                contexts[r].state = state
    return contexts


def recovered_share(stale: float, realtime: float, retrain: float) -> float | None:
    """(realtime − stale) / (retrain − stale); None when retraining did not improve on the stale model."""
    gap = retrain - stale
    if not np.isfinite(gap) or gap <= 0:
        return None
    return float((realtime - stale) / gap)


def _summary(metrics: dict[str, float], k: int) -> dict[str, float]:
    out = {f"{name}@{k}": metrics[f"{name}@{k}"] for name in REPORTED}
    return {**out, "auc": metrics["auc"], "n_users": metrics["n_users"]}


def measure(make: Callable[[], Recommender], fs: FreshnessSplit, k: int = 10) -> dict:
    """Stale, realtime and retrain views of one recommender on one freshness split."""
    split = fs.eval_split()
    seconds = {}
    started = time.perf_counter()
    stale = make()
    stale.fit(fs.train)
    seconds["stale_fit"] = time.perf_counter() - started
    started = time.perf_counter()
    contexts = realtime_contexts(stale, fs)
    seconds["realtime_update"] = time.perf_counter() - started
    started = time.perf_counter()
    retrained = make()
    retrained.fit(fs.seen)
    seconds["retrain_fit"] = time.perf_counter() - started
    stale_view = fs.train.contexts(range(fs.train.n_users), stale.recent_events)
    scored = {
        "stale": evaluate(stale, split, k=k, contexts=stale_view),
        "realtime": evaluate(stale, split, k=k, contexts=contexts),
        "retrain": evaluate(retrained, split, k=k),
    }
    ndcg = f"ndcg@{k}"
    share = recovered_share(scored["stale"][ndcg], scored["realtime"][ndcg], scored["retrain"][ndcg])
    return {
        **{name: _summary(m, k) for name, m in scored.items()},
        "recovered_share": share,
        "seconds": {n: round(v, 3) for n, v in seconds.items()},
    }


def run(quick: bool, settings: Settings | None = None, only: list[str] | None = None) -> dict:
    """Every single-machine recommender on MovieLens-100K; the gain of each is also set against ALS's retrain."""
    s = settings or get_settings()
    fs = make_freshness_split(load_ml100k_events(), s.eval_test_share, list(s.event_weights))
    names = [n for n in registry.names() if n != "spark_als" and (not only or n in only or n == REFERENCE)]
    out: dict = {name: measure(partial(registry.create, name, s), fs, s.eval_k) for name in names}
    ndcg = f"ndcg@{s.eval_k}"
    if REFERENCE in out:
        als = out[REFERENCE]
        for r in out.values():
            r["vs_als_retrain"] = recovered_share(als["stale"][ndcg], r["realtime"][ndcg], als["retrain"][ndcg])
    out["split"] = {
        "users": int(fs.train.n_users),
        "touched_users": int(fs.touched.sum()),
        "streamed_events": fs.n_streamed_events,
        "streamed_events_on_new_items": fs.n_streamed_skipped,
        "held_events": fs.n_held_events,
        "held_events_on_new_items": fs.n_held_dropped,
        "k": s.eval_k,
        "test_share": s.eval_test_share,
    }
    return out


__all__ = ["FreshnessSplit", "make_freshness_split", "measure", "realtime_contexts", "recovered_share", "run"]
