"""The offline evaluation protocol: per-user time split, datasets from events, any recommender scored on it.

Events are a pandas DataFrame with one row per event: `user_id` (str), `item_id`
(str), `ts` (epoch ms int or datetime64), `weight` (float), and optionally
`event_type` (str) and `tiebreak` (int). Strength r_ui is the sum of a user's
event weights on an item.

The split is per user by time: the last `ceil(test_share · n_u)` of user u's
events are test (the architecture doc's evaluation protocol). Events with the
same timestamp are ordered by `item_id` (then weight), or by `tiebreak` when the
frame has one (`shuffle_ties` adds a random one: the protocol reports both, so a
gain cannot come from the tie order). Relevant items are the test items the user
had *not* interacted with in train: seen items are filtered out of every
recommendation list, so they could never be hit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.contracts.events import event_weights
from recsys.data import datasets
from recsys.data.inputs import Dataset, UserContext
from recsys.data.movielens import RATING_TO_EVENT, load_ratings
from recsys.evaluation.metrics import (
    auc_block,
    auc_block_rows,
    auc_of_block,
    canonical,
    per_user_metrics,
    ranking_metrics,
)
from recsys.topk import PAD, select_top

if TYPE_CHECKING:
    from recsys.models.base import Recommender

EVENT_COLUMNS = ("user_id", "item_id", "ts", "weight")


# --- order and split ---------------------------------------------------------------
def order_events(events: pd.DataFrame) -> pd.DataFrame:
    """The protocol's order: by user, then time, then `tiebreak` if present, else item id and weight."""
    missing = set(EVENT_COLUMNS) - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    ties = ["tiebreak"] if "tiebreak" in events.columns else ["item_id", "weight"]
    # A stable lexsort over all keys: the result does not depend on the input's row order.
    return events.sort_values(["user_id", "ts", *ties], kind="mergesort").reset_index(drop=True)


def shuffle_ties(events: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The events with a random `tiebreak`: equal timestamps of a user come in a seeded random order."""
    out = events.copy()
    out["tiebreak"] = np.random.default_rng(seed).permutation(len(out))
    return out


def _n_test(n_events: np.ndarray, test_share: float) -> np.ndarray:
    """ceil(test_share · n) test events per user, capped at n − 1 so train always keeps one.

    ceil rather than round: every user with >= 2 events gets at least one test
    event (round would give a 2..4-event user none at 20%), so small users are
    evaluated too. The product is rounded to 9 decimals first because 0.2 · 15
    is 3.0000000000000004 in floating point, and ceil would make that 4.
    """
    raw = np.ceil(np.round(n_events * test_share, 9)).astype(np.int64)
    return np.clip(raw, 0, np.maximum(n_events - 1, 0))


def time_split(events: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last ceil(test_share · n_u) events by time are test, the rest train.

    Users with fewer than 2 events keep everything in train. Both frames come back in
    the protocol's order (`order_events`) with a fresh index.
    """
    if not 0.0 <= test_share < 1.0:
        raise ValueError(f"test_share must be in [0, 1), got {test_share}")
    ordered = order_events(events)
    by_user = ordered.groupby("user_id", sort=False)
    position = by_user.cumcount().to_numpy()
    size = by_user["user_id"].transform("size").to_numpy()
    is_test = position >= size - _n_test(size, test_share)
    return ordered[~is_test].reset_index(drop=True), ordered[is_test].reset_index(drop=True)


# --- datasets from events --------------------------------------------------------------
def dataset_from_events(
    events: pd.DataFrame,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
    event_types: Sequence[str] | None = None,
    items: Mapping[str, datasets.Attributes] | None = None,
) -> tuple[Dataset, int]:
    """A `Dataset` from events, and how many events were left out (user or item not in the given id orders).

    Given id orders are reused (so train and test share positions), else sorted unique ids.
    `items` maps item id -> (category, title, price, tags): the catalogue attributes.
    """
    missing = set(EVENT_COLUMNS) - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    types = list(event_types) if event_types is not None else _types(events)
    kinds = events["event_type"].astype(str) if "event_type" in events.columns else np.full(len(events), types[0])
    return datasets.build(
        events["user_id"].astype(str).to_numpy(),
        events["item_id"].astype(str).to_numpy(),
        _ms(events["ts"]).to_numpy(),
        np.asarray(kinds, dtype=object),
        events["weight"].to_numpy(np.float64),
        types,
        tiebreak=events["tiebreak"].to_numpy() if "tiebreak" in events.columns else None,
        session=events["session_id"].to_numpy() if "session_id" in events.columns else None,
        user_ids=user_ids,
        item_ids=item_ids,
        items=items,
    )


def _types(events: pd.DataFrame) -> list[str]:
    if "event_type" not in events.columns:
        return ["view"]
    return sorted(events["event_type"].astype(str).unique().tolist())


def _ms(ts: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(ts):
        return ts.astype("datetime64[ms, UTC]" if ts.dt.tz is not None else "datetime64[ms]").astype("int64")
    return ts.astype("int64")


def _id_order(column: pd.Series, given: np.ndarray | None) -> np.ndarray:
    if given is not None:
        ids = np.asarray(given, dtype=object)
        if pd.Index(ids).has_duplicates:
            raise ValueError("id order contains duplicates")
        return ids
    return np.asarray(sorted(column.astype(str).unique()), dtype=object)


# --- the split used for evaluation ----------------------------------------------------------
@dataclass(frozen=True)
class EvalSplit:
    """The train `Dataset` and the relevant held-out items per train user (n_users×n_items, 1.0 = relevant).

    `test` holds only items the user did not interact with in train and that exist in the
    train item order; `n_test_events_dropped` counts test events on items (or users)
    unknown to train, which no model trained on train can rank. `test_events` are the
    held-out events themselves, in the protocol's order (for freshness: stream a part).
    """

    train: Dataset
    test: sp.csr_matrix
    n_test_events: int
    n_test_events_dropped: int
    test_events: pd.DataFrame


def make_split(
    events: pd.DataFrame,
    test_share: float = 0.2,
    event_types: Sequence[str] | None = None,
    items: Mapping[str, datasets.Attributes] | None = None,
    item_universe: Sequence[str] | None = None,
) -> EvalSplit:
    """time_split, then the train dataset and the relevant-items matrix on shared positions.

    The item positions are the train items, plus `item_universe` (catalogue items no one
    touched in train: only content can rank them, the cold-item evaluation needs them).
    """
    train_events, test_events = time_split(events, test_share)
    item_ids = None
    if item_universe is not None:
        item_ids = np.asarray(sorted(set(train_events["item_id"].astype(str)) | set(item_universe)), dtype=object)
    types = list(event_types) if event_types is not None else _types(events)
    train, _ = dataset_from_events(train_events, item_ids=item_ids, event_types=types, items=items)
    held_out, dropped = dataset_from_events(
        test_events, user_ids=train.user_ids, item_ids=train.item_ids, event_types=types
    )
    test_bin = (held_out.strengths != 0).astype(np.float32)
    seen = (train.strengths != 0).astype(np.float32)
    # Items already seen in train are filtered from recommendations, so they cannot count as relevant.
    relevant = (test_bin - test_bin.multiply(seen)).tocsr()
    relevant.eliminate_zeros()
    relevant.sort_indices()
    return EvalSplit(train, relevant.astype(np.float32), len(test_events), dropped, test_events)


def sample_users(test: sp.csr_matrix, max_users: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows with at least one relevant item, all of them or a seeded sample of `max_users` (sorted)."""
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    if max_users is not None and rows.size > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_users, replace=False))
    return rows


# --- scoring a recommender ------------------------------------------------------------------
def top_k_for(
    model: Recommender, contexts: Sequence[UserContext], exclude: sp.csr_matrix, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) best item positions and scores for these users, excluded items left out, padded with -1."""
    return top_of_scores(np.asarray(model.score(contexts)), exclude, k)


def top_of_scores(raw: np.ndarray, exclude: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) best item positions and scores of a score block (as float32), excluded items left out."""
    scores = np.array(raw, dtype=np.float32, order="C")  # row-major: a model may hand a broadcast or F-ordered block
    coo = exclude.tocoo()
    scores[coo.row[coo.data != 0], coo.col[coo.data != 0]] = -np.inf
    scores[np.isnan(scores)] = -np.inf
    return select_top(scores, k)


@overload
def evaluate(
    model: Recommender,
    split: EvalSplit,
    k: int = 10,
    max_users: int | None = None,
    seed: int = 0,
    batch_size: int = 512,
    contexts: Sequence[UserContext] | None = None,
    per_user: Literal[False] = False,
) -> dict[str, float]: ...


@overload
def evaluate(
    model: Recommender,
    split: EvalSplit,
    k: int = 10,
    max_users: int | None = None,
    seed: int = 0,
    batch_size: int = 512,
    contexts: Sequence[UserContext] | None = None,
    *,
    per_user: Literal[True],
) -> tuple[dict[str, float], np.ndarray, np.ndarray]: ...


def evaluate(
    model: Recommender,
    split: EvalSplit,
    k: int = 10,
    max_users: int | None = None,
    seed: int = 0,
    batch_size: int = 512,
    contexts: Sequence[UserContext] | None = None,
    per_user: bool = False,
) -> dict[str, float] | tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics@k of a fitted model on the split: train items excluded from its lists.

    Users are the train users with held-out items (a seeded sample of `max_users`), as
    the model sees them at the split: their train history and latest train events.
    `contexts` (one per train user) replaces that view, e.g. with streamed events added.
    With `per_user`, also returns the users and their NDCG@k (for paired comparisons).
    """
    train = split.train
    users = sample_users(split.test, max_users, seed)
    recent = model.recent_events

    def view(rows: np.ndarray) -> list[UserContext]:
        return [contexts[r] for r in rows] if contexts is not None else train.contexts(rows, recent)

    recommended = np.full((users.size, k), PAD, np.int64)
    auc = np.full(users.size, np.nan)
    seen, relevant = canonical(train.strengths), canonical(split.test)
    for start in range(0, users.size, batch_size):
        rows = users[start : start + batch_size]
        # One scoring pass per batch serves both the top k and the AUC: scoring is the evaluation's cost.
        raw = np.asarray(model.score(view(rows)))
        recommended[start : start + rows.size], _ = top_of_scores(raw, train.strengths[rows], k)
        step = auc_block_rows(raw.shape[1], batch_size)
        for lo in range(0, rows.size, step):
            block = auc_block(raw[lo : lo + step])
            # AUC needs finite scores; what a model cannot rank ties at the bottom.
            np.nan_to_num(block, copy=False, nan=-1e30, neginf=-1e30, posinf=1e30)
            part = rows[lo : lo + step]
            auc[start + lo : start + lo + part.size] = auc_of_block(block, relevant[part], seen[part])

    metrics = ranking_metrics(recommended, split.test, users, train=train.strengths, auc=auc)
    if not per_user:
        return metrics
    has = np.diff(split.test.indptr)[users] > 0
    ndcg = per_user_metrics(recommended[has], split.test[users[has]])["ndcg"]
    return metrics, users[has], ndcg


# --- MovieLens-100K as events -----------------------------------------------------------------
def load_ml100k_events(weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """MovieLens-100K ratings as events: rating → event type (RATING_TO_EVENT) → weight (settings' event weights).

    Columns: user_id, item_id, ts (epoch ms), weight, event_type. Raw ids (not pseudonymised): evaluation only.
    """
    weights = dict(weights) if weights is not None else event_weights()
    ratings = load_ratings()
    event_type = ratings["rating"].map(RATING_TO_EVENT)
    return pd.DataFrame(
        {
            "user_id": ratings["user_id"].astype(str),
            "item_id": ratings["item_id"].astype(str),
            "ts": ratings["ts_ms"].astype("int64"),
            "weight": event_type.map(weights).astype(np.float64),
            "event_type": event_type,
        }
    )
