"""SLIT (Choi et al. 2021): learned transitions, a ridge regression from the recent past to the next items.

Batch: every user's ordered events are cut into tie windows (ts // tie_ms: events in
one window, such as a page of ratings submitted at once, are unordered; `tie_ms` 0: one
event each). For every window t after a user's first, one training row:

    input  x = the recency profile just before t: the latest `last` events before window t,
               each weighing decay^(windows between it and t − 1) (the query's profile exactly);
    target y = the items of windows t .. t + horizon − 1, weighing horizon_decay^(window − t).

Then B = (XᵀX + λI)⁻¹ XᵀY, an item × item matrix used like item-KNN. Unlike counted
transitions, it reads the whole recent context jointly and explains away; since windows
are the unit, the order inside a tie is never learned. Real time: nothing to compute;

    score(u, j) = Σ_t decay^(age_t) · B(i_t, j)

over the user's latest `last` events, age in tie windows.

Scale guard: as in EASE, only the `max_items` most popular items get weights (XᵀX is dense
and inverted in O(n³)), rows of B are pruned to the `neighbours` largest weights by
magnitude (negative ones matter: "not after this one"), and at
most `max_rows` training rows (seeded sample of user-windows) enter XᵀX and XᵀY.

Defaults: chosen on validation carved from MovieLens-100K's train part (`bench/tune.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset, EventLog
from recsys.models.base import Params
from recsys.models.ease import SOLVE_DTYPE, expand, most_popular, pruned_rows, ridge_inverse
from recsys.models.item_to_item import ItemToItem
from recsys.models.sparse import tie_groups

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SlitParams(Params):
    lam: float = Field(1000.0, gt=0, description="L2 penalty λ.")
    last: int = Field(50, ge=1, description="Latest events in the input profile (training and query).")
    decay: float = Field(0.93, gt=0, le=1, description="Weight of an event relative to the next newer tie window.")
    horizon: int = Field(2, ge=1, description="Tie windows from t on that make up the target.")
    horizon_decay: float = Field(0.7, gt=0, le=1, description="Weight of a target one window further away.")
    tie_ms: int = Field(1000, ge=0, description="Events within one window ts // tie_ms are unordered (0: by row).")
    max_items: int = Field(10_000, ge=2, description="Only the most popular items get weights (the O(n³) guard).")
    neighbours: int = Field(500, ge=1, description="Largest weights (by magnitude) kept per row of B.")
    max_rows: int = Field(1_000_000, ge=1, description="Training rows (user-windows) sampled at most.")
    seed: int = 42


class SLIT(ItemToItem):
    name = "slit"
    Params = SlitParams
    matrix_file = "slit_weights.npz"

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        p = cast(SlitParams, self.params)
        self.n_items = data.n_items
        kept = most_popular(data.popularity(), p.max_items)
        x, y = training_rows(data.events, data.n_items, p.last, p.decay, p.horizon, p.horizon_decay, p.tie_ms)
        if x.shape[0] > p.max_rows:
            pick = np.sort(np.random.default_rng(p.seed).choice(x.shape[0], p.max_rows, replace=False))
            x, y = x[pick], y[pick]
        x, y = x[:, kept].astype(SOLVE_DTYPE).tocsc(), y[:, kept].astype(SOLVE_DTYPE).tocsc()
        precision = ridge_inverse((x.T @ x).toarray(), p.lam)
        cross = (x.T @ y).tocsr()  # XᵀY, sparse

        def rows(lo: int, hi: int) -> np.ndarray:
            return np.asarray(precision[lo:hi] @ cross)  # (P XᵀY)[lo:hi]

        self.matrix = expand(pruned_rows(rows, len(kept), p.neighbours), kept, data.n_items)


def training_rows(
    events: EventLog, n_items: int, last: int, decay: float, horizon: int, horizon_decay: float, tie_ms: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(X, Y): one row per tie window of the log (rows of a user's first window are empty), vectorised.

    Row g's input is the `last` events before window g's first event (same user), weighing
    decay^((g − 1) − window(e)); its target the events of windows g .. g + horizon − 1 (same
    user), weighing horizon_decay^(window(e) − g).
    """
    n = len(events)
    group = tie_groups(events.user, events.ts_ms, tie_ms)
    n_groups = int(group[-1]) + 1 if n else 0
    shape = (n_groups, n_items)
    if n == 0:
        return sp.csr_matrix(shape, dtype=np.float64), sp.csr_matrix(shape, dtype=np.float64)
    user_start = np.searchsorted(events.user, events.user, side="left")  # first event of each event's user
    group_start = np.flatnonzero(np.diff(group, prepend=-1))  # first event of each group
    group_user_start = user_start[group_start]
    xr, xc, xv = [], [], []
    for back in range(1, last + 1):
        e = group_start - back
        ok = e >= group_user_start
        if not ok.any():
            break
        g = np.flatnonzero(ok)
        e = e[ok]
        xr.append(g)
        xc.append(events.item[e])
        xv.append(decay ** (g - 1 - group[e]).astype(np.float64))
    yr, yc, yv = [], [], []
    user_first_group = group[user_start]
    for ahead in range(horizon):
        g = group - ahead
        ok = g > user_first_group  # a user's first window has no input
        yr.append(g[ok])
        yc.append(events.item[ok])
        yv.append(np.full(int(ok.sum()), horizon_decay**ahead))

    def matrix(r, c, v) -> sp.csr_matrix:
        if not r:
            return sp.csr_matrix(shape, dtype=np.float64)
        out = sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=shape)
        out.sum_duplicates()
        return out

    return matrix(xr, xc, xv), matrix(yr, yc, yv)
