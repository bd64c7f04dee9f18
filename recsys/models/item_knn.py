"""Item-based collaborative filtering: item–item cosine on co-occurrence, scored from the shopper's latest events.

Batch: with X the binary (users × items) interaction matrix, the co-occurrence C = XᵀX
and the shrunk cosine

    sim(i, j) = C_ij / (sqrt(n_i · n_j) + shrink)        n_i = users who touched i

keeping each item's `neighbours` most similar items. Real time: nothing to compute;
at request time the user's latest `last` events (kept bounded by the speed layer)
pick the neighbours,

    score(u, j) = Σ_t decay^(age_t) · w(type_t) · sim(i_t, j)

so one click moves the list at once. Ages count distinct tie windows (`tie_ms`): events
submitted together weigh the same. Defaults: validation carved from MovieLens-100K's
train part (`bench/tune.py`). Similar items are the row sim(i, ·); an
explanation is the recent event with the largest term ("because you viewed X").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.models.base import AnyParams, Dataset, Params, Reason, Recommender, UserContext
from recsys.models.sparse import dense, kind_weights, recent_weights, top_n_per_row

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_KIND_WEIGHTS = {"view": 1.0, "add_to_cart": 1.0, "purchase": 1.0}


class ItemKnnParams(Params):
    neighbours: int = Field(100, ge=1, description="Most similar items kept per item.")
    shrink: float = Field(10.0, ge=0, description="Added to the cosine's denominator: rare pairs count less.")
    last: int = Field(10, ge=1, description="The user's latest events that pick the neighbours.")
    decay: float = Field(0.75, gt=0, le=1, description="Weight of an event relative to the next newer one.")
    tie_ms: int = Field(1000, ge=0, description="Events within one window ts // tie_ms share an age (0: by row).")
    kind_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    max_user_items: int = Field(500, ge=1, description="Co-occurrence counts a user's latest this many items only.")


class ItemKNN(Recommender):
    name = "item_knn"
    Params = ItemKnnParams

    def __init__(self, params: ItemKnnParams | None = None) -> None:
        super().__init__(params)
        self.params: ItemKnnParams
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)
        self._kinds = np.ones(1)

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.n_items = data.n_items
        self.similarity = item_cosine(capped(data, self.params.max_user_items), self.params.shrink,
                                      self.params.neighbours)  # fmt: skip
        self._kinds = kind_weights(data.event_types, self.params.kind_weights)

    def _weights(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        p = self.params
        return recent_weights(users, self.n_items, p.last, p.decay, self._kinds, p.tie_ms)

    def score(self, users: Sequence[UserContext]) -> np.ndarray:
        return dense(self._weights(users) @ self.similarity)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _row_top(self.similarity, item, k)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        terms = self._weights([user]).multiply(self.similarity[:, item].T).tocsr()  # term per recent item
        return _largest(terms, n)

    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / "item_similarity.npz", self.similarity)
        np.save(directory / "kind_weights.npy", self._kinds)
        return {"item_similarity": "item_similarity.npz", "kind_weights": "kind_weights.npy"}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> ItemKNN:
        model = cls(cast(ItemKnnParams, params))
        model.similarity = sp.load_npz(directory / "item_similarity.npz").tocsr()
        model._kinds = np.load(directory / "kind_weights.npy")
        model.n_items = data.n_items
        return model


def capped(data: Dataset, max_items: int) -> sp.csr_matrix:
    """Binary (users × items), each user limited to their latest `max_items` items: a power user's thousands of
    items would add millions of pairs that say little."""
    binary = (data.strengths > 0).astype(np.float32).tocsr()
    counts = np.diff(binary.indptr)
    if counts.max(initial=0) <= max_items or not len(data.events):
        return binary
    ptr = data.events.indptr(data.n_users)
    rows, cols = [], []
    for u in np.flatnonzero(counts > max_items):
        items = data.events.item[ptr[u] : ptr[u + 1]]
        _, first_from_end = np.unique(items[::-1], return_index=True)
        latest = items[::-1][np.sort(first_from_end)[:max_items]]
        rows.append(np.full(len(latest), u))
        cols.append(latest)
    heavy = np.isin(np.arange(data.n_users), np.flatnonzero(counts > max_items))
    keep = sp.diags((~heavy).astype(np.float32)) @ binary
    extra = sp.csr_matrix((np.ones(sum(len(c) for c in cols), np.float32),
                           (np.concatenate(rows), np.concatenate(cols))), shape=binary.shape)  # fmt: skip
    return (keep + extra).tocsr()


def item_cosine(binary: sp.csr_matrix, shrink: float, neighbours: int) -> sp.csr_matrix:
    """Shrunk cosine between item columns of a binary matrix, top `neighbours` per item."""
    n = np.asarray(binary.sum(axis=0)).ravel().astype(np.float64)
    co = (binary.T @ binary).tocsr().astype(np.float64)
    co.setdiag(0)
    co.eliminate_zeros()
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    co.data = co.data / (np.sqrt(n[rows] * n[co.indices]) + shrink)
    return top_n_per_row(co, neighbours)


def _row_top(matrix: sp.csr_matrix, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    start, end = matrix.indptr[item], matrix.indptr[item + 1]
    idx, val = matrix.indices[start:end], matrix.data[start:end]
    order = np.lexsort((idx, -val))[:k]
    return idx[order].astype(np.int64), val[order].astype(np.float32)


def _largest(terms: sp.csr_matrix, n: int) -> list[Reason]:
    """The n largest positive entries of a one-row matrix, as reasons (item = column)."""
    row = terms.tocoo()
    positive = row.data > 0
    cols, vals = row.col[positive], row.data[positive]
    order = np.lexsort((cols, -vals))[:n]
    return [Reason(int(cols[i]), float(vals[i])) for i in order]
