"""The offline evaluation protocol: per-user time split, interaction matrices, model vs. popularity.

Events are a pandas DataFrame with one row per event: `user_id` (str),
`item_id` (str), `ts` (epoch ms int or datetime64), `weight` (float).
Strength r_ui is the sum of a user's event weights on an item.

The split is per user by time: the last `ceil(test_share · n_u)` of user u's
events are test (DESIGN.md, "Evaluation protocol"). Relevant items are the
test items the user had *not* interacted with in train: seen items are
filtered out of every recommendation list, so they could never be hit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation.metrics import ranking_metrics
from recsys.models.topk import top_k, top_k_popular

EVENT_COLUMNS = ("user_id", "item_id", "ts", "weight")


# --- split -----------------------------------------------------------------------
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

    Order within a user: `ts`, then `item_id`, then `weight` (so the result does
    not depend on the input's row order). Users with fewer than 2 events keep
    everything in train. Both frames come back in that order with a fresh index.
    """
    if not 0.0 <= test_share < 1.0:
        raise ValueError(f"test_share must be in [0, 1), got {test_share}")
    missing = set(EVENT_COLUMNS) - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    # Sorting by all keys (a lexsort, stable) makes ties deterministic.
    ordered = events.sort_values(["user_id", "ts", "item_id", "weight"], kind="mergesort").reset_index(drop=True)
    by_user = ordered.groupby("user_id", sort=False)
    position = by_user.cumcount().to_numpy()
    size = by_user["user_id"].transform("size").to_numpy()
    is_test = position >= size - _n_test(size, test_share)
    return ordered[~is_test].reset_index(drop=True), ordered[is_test].reset_index(drop=True)


# --- interaction matrices -------------------------------------------------------------
@dataclass(frozen=True)
class Interactions:
    """A user×item matrix of strengths r_ui (sum of event weights, float32) with its id orders.

    Row u is `user_ids[u]`, column i is `item_ids[i]`. `n_dropped` counts the
    events left out because their user or item was not in the given id orders.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix
    n_dropped: int = 0

    @classmethod
    def from_events(
        cls,
        events: pd.DataFrame,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
    ) -> Interactions:
        """Build from events; given id orders are reused (so train and test share indices), else sorted unique ids."""
        users = _id_order(events["user_id"], user_ids)
        items = _id_order(events["item_id"], item_ids)
        rows = pd.Index(users).get_indexer(events["user_id"].astype(str))
        cols = pd.Index(items).get_indexer(events["item_id"].astype(str))
        known = (rows >= 0) & (cols >= 0)
        weights = events["weight"].to_numpy(dtype=np.float32)[known]
        # COO → CSR sums duplicate (user, item) entries: repeated events add up to r_ui.
        matrix = sp.coo_matrix((weights, (rows[known], cols[known])), shape=(users.size, items.size)).tocsr()
        matrix.sum_duplicates()
        matrix.sort_indices()
        return cls(users, items, matrix.astype(np.float32), n_dropped=int((~known).sum()))

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @cached_property
    def _user_index(self) -> pd.Index:
        return pd.Index(self.user_ids)

    @cached_property
    def _item_index(self) -> pd.Index:
        return pd.Index(self.item_ids)

    def user_index(self, user_ids: str | np.ndarray | list[str]) -> int | np.ndarray:
        """Row(s) of user id(s); -1 where unknown."""
        if isinstance(user_ids, str):
            return int(self._user_index.get_indexer([user_ids])[0])
        return self._user_index.get_indexer(np.asarray(user_ids, dtype=object))

    def item_index(self, item_ids: str | np.ndarray | list[str]) -> int | np.ndarray:
        """Column(s) of item id(s); -1 where unknown."""
        if isinstance(item_ids, str):
            return int(self._item_index.get_indexer([item_ids])[0])
        return self._item_index.get_indexer(np.asarray(item_ids, dtype=object))

    def items_of(self, user_id: str) -> np.ndarray:
        """Item ids the user interacted with (column order)."""
        row = self.user_index(user_id)
        if row < 0:
            return np.array([], dtype=object)
        return self.item_ids[self.matrix[row].indices]


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
    """Train interactions and the relevant held-out items per train user (n_users×n_items, 1.0 = relevant).

    `test` holds only items the user did not interact with in train and that
    exist in the train catalogue; `n_test_events_dropped` counts test events on
    items (or users) unknown to train, which no model trained on train can rank.
    """

    train: Interactions
    test: sp.csr_matrix
    n_test_events: int
    n_test_events_dropped: int


def make_split(events: pd.DataFrame, test_share: float = 0.2) -> EvalSplit:
    """time_split, then train matrix and relevant-items matrix on shared indices."""
    train_events, test_events = time_split(events, test_share)
    train = Interactions.from_events(train_events)
    held_out = Interactions.from_events(test_events, user_ids=train.user_ids, item_ids=train.item_ids)
    test_bin = (held_out.matrix != 0).astype(np.float32)
    seen = (train.matrix != 0).astype(np.float32)
    # Items already seen in train are filtered from recommendations, so they cannot count as relevant.
    relevant = (test_bin - test_bin.multiply(seen)).tocsr()
    relevant.eliminate_zeros()
    relevant.sort_indices()
    return EvalSplit(train, relevant.astype(np.float32), len(test_events), held_out.n_dropped)


def sample_users(test: sp.csr_matrix, max_users: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows with at least one relevant item, all of them or a seeded sample of `max_users` (sorted)."""
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    if max_users is not None and rows.size > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_users, replace=False))
    return rows


def evaluate_factors(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    split: EvalSplit,
    k: int = 10,
    max_users: int | None = None,
    seed: int = 0,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Metrics@k of a factor model (score x_u · y_i), train items excluded from its lists."""
    train = split.train
    if user_factors.shape[0] != train.n_users or item_factors.shape[0] != train.n_items:
        raise ValueError(
            f"factors {user_factors.shape}/{item_factors.shape} do not match {train.n_users} users × "
            f"{train.n_items} items"
        )
    users = sample_users(split.test, max_users, seed)
    items_t = np.ascontiguousarray(np.asarray(item_factors, dtype=np.float32).T)
    recommended, _ = top_k(user_factors[users], item_factors, k, exclude=train.matrix[users], batch_size=batch_size)
    scores_fn = lambda rows: np.asarray(user_factors[rows], dtype=np.float32) @ items_t  # noqa: E731
    return ranking_metrics(recommended, split.test, users, scores_fn, train.matrix, batch_size)


def item_popularity(train: Interactions) -> np.ndarray:
    """Number of distinct train users per item (not summed weights: one heavy user should not make a hit)."""
    return distinct_users_per_item(train.matrix)


def distinct_users_per_item(matrix: sp.csr_matrix) -> np.ndarray:
    return np.bincount(matrix.indices[matrix.data != 0], minlength=matrix.shape[1]).astype(np.float64)


def evaluate_popularity(
    split: EvalSplit,
    k: int = 10,
    max_users: int | None = None,
    seed: int = 0,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Metrics@k of the popularity baseline (same list for everyone, minus each user's seen items)."""
    train = split.train
    pop = item_popularity(train)
    users = sample_users(split.test, max_users, seed)
    recommended, _ = top_k_popular(pop, k, exclude=train.matrix[users], batch_size=batch_size)
    scores_fn = lambda rows: np.broadcast_to(pop, (len(rows), pop.size))  # noqa: E731
    return ranking_metrics(recommended, split.test, users, scores_fn, train.matrix, batch_size)


# --- the reference ALS --------------------------------------------------------------------
def train_implicit_lib(
    train: Interactions,
    factors: int,
    regularization: float,
    alpha: float,
    iterations: int,
    seed: int = 0,
    num_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The `implicit` library's CPU ALS as it ships (conjugate-gradient solves) on the train strengths."""
    return fit_implicit(train.matrix, factors, regularization, alpha, iterations, seed, num_threads, use_cg=True)


def fit_implicit(
    matrix: sp.spmatrix,
    factors: int,
    regularization: float,
    alpha: float,
    iterations: int,
    seed: int = 0,
    num_threads: int = 0,
    use_cg: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """implicit's CPU ALS on a (users x items) strength matrix; returns float32 (user_factors, item_factors).

    Objective (implicit 0.7): c_ui = alpha · r_ui, p_ui = 1 for r_ui > 0, unscaled
    λ (DESIGN.md, "The math"). `use_cg=False` solves each least-squares step exactly
    (Cholesky) instead of implicit's default few conjugate-gradient steps. `num_threads`
    = 0 uses every core for implicit's own threads; BLAS is held to one thread meanwhile,
    because implicit's threads each call BLAS and nested pools oversubscribe the cores
    (implicit warns about exactly this; the limit removes the cause, and the warning is
    silenced in case threadpoolctl cannot see the BLAS).
    """
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*threadpool.*", category=RuntimeWarning)
        # The CPU class directly: the same as implicit.als.AlternatingLeastSquares(use_gpu=False),
        # without the factory's GPU probe.
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            use_cg=use_cg,
            calculate_training_loss=False,
            num_threads=num_threads,
            random_state=seed,
        )
        model.fit(sp.csr_matrix(matrix, dtype=np.float32), show_progress=False)
    return _as_float32(model.user_factors), _as_float32(model.item_factors)


def _as_float32(factors: object) -> np.ndarray:
    """implicit's CPU factors are numpy already; GPU ones have `.to_numpy()`."""
    to_numpy = getattr(factors, "to_numpy", None)
    return np.ascontiguousarray(to_numpy() if callable(to_numpy) else np.asarray(factors), dtype=np.float32)


# --- MovieLens-100K as events -----------------------------------------------------------------
def load_ml100k_events(weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """MovieLens-100K ratings as events: rating → event type (RATING_TO_EVENT) → weight (settings' event weights).

    Columns: user_id, item_id, ts (epoch ms), weight, event_type. Raw ids (not pseudonymised): evaluation only.
    """
    from recsys.contracts.events import event_weights
    from recsys.data.movielens import RATING_TO_EVENT, load_ratings

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


__all__ = [
    "EvalSplit",
    "Interactions",
    "evaluate_factors",
    "evaluate_popularity",
    "item_popularity",
    "load_ml100k_events",
    "make_split",
    "sample_users",
    "time_split",
    "train_implicit_lib",
]
