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

import functools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset
from recsys.io import spark_counts
from recsys.io.spark_counts import use_spark
from recsys.models.base import Params
from recsys.models.item_to_item import ItemToItem
from recsys.models.sparse import kind_weights, top_n_per_row

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


class ItemKNN(ItemToItem):
    name = "item_knn"
    Params = ItemKnnParams
    matrix_file = "item_similarity.npz"
    weighs_kinds = True

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        p = self.params
        assert isinstance(p, ItemKnnParams)
        self.n_items = data.n_items
        binary = capped(data, p.max_user_items)
        if spark is not None and use_spark(spark, len(data.events)):
            counts = cooccurrence_by_spark(spark, binary)
        else:
            counts = cooccurrence(binary)
        self.matrix = item_cosine(counts, p.shrink, p.neighbours)
        self.kinds = kind_weights(data.event_types, p.kind_weights)


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
    extra = sp.csr_matrix(
        (np.ones(sum(len(c) for c in cols), np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=binary.shape,
    )
    return (keep + extra).tocsr()


def cooccurrence(binary: sp.csr_matrix) -> sp.csr_matrix:
    """C = XᵀX of a binary (users × items) matrix (float64): C_ij users who touched both, C_ii users who touched i."""
    return (binary.T @ binary).tocsr().astype(np.float64)


def _cooccurrence_pieces(part: pd.DataFrame, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`cooccurrence` of some users' (user, item) entries, as (row, col, value): C is a sum over users."""
    _, local = np.unique(part["user"].to_numpy(), return_inverse=True)
    x = sp.csr_matrix(
        (np.ones(len(local), np.float32), (local, part["item"].to_numpy())),
        shape=(int(local.max(initial=-1)) + 1, n_items),
    )
    c = cooccurrence(x).tocoo()
    return c.row, c.col, c.data


def cooccurrence_by_spark(spark: SparkSession, binary: sp.csr_matrix) -> sp.csr_matrix:
    """`cooccurrence(binary)`, the users' shares counted by Spark tasks and summed by Spark (`spark_counts`)."""
    coo = binary.tocoo()
    order = np.lexsort((coo.col, coo.row))
    user, item = coo.row[order].astype(np.int32), coo.col[order].astype(np.int32)
    n = binary.shape[1]
    return spark_counts.summed(
        spark, {"user": user, "item": item}, user, functools.partial(_cooccurrence_pieces, n_items=n), (n, n)
    )


# Entries of the co-occurrence matrix turned into cosines at a time: its float64 copy and index arrays are
# per chunk, not per matrix (at 100k items the whole-matrix temporaries were most of a 20 GB peak).
COSINE_CHUNK = 8_000_000


def item_cosine(co: sp.csr_matrix, shrink: float, neighbours: int, chunk: int = COSINE_CHUNK) -> sp.csr_matrix:
    """Shrunk cosine between items from their co-occurrence counts (n_i on the diagonal), top `neighbours` per item.

    Row blocks of about `chunk` entries, each to its top `neighbours`: rows are independent, so the blocks
    stacked are the whole matrix's answer, value for value."""
    co = sp.csr_matrix(co)
    n = co.diagonal().astype(np.float64)
    blocks = []
    for lo, hi in _row_blocks(co.indptr, chunk):
        part = sp.csr_matrix(co[lo:hi], dtype=np.float64, copy=True)
        rows = np.repeat(np.arange(lo, hi), np.diff(part.indptr))
        part.data = part.data / (np.sqrt(n[rows] * n[part.indices]) + shrink)
        part.data[part.indices == rows] = 0  # the diagonal (n_i itself): top_n_per_row drops the zeros
        blocks.append(top_n_per_row(part, neighbours, drop_diagonal=False))
    if not blocks:
        return sp.csr_matrix(co.shape, dtype=np.float32)
    return sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32)


def _row_blocks(indptr: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """Consecutive (lo, hi) row ranges of about `chunk` entries each (a longer row is a block of its own)."""
    bounds, lo, n_rows = [], 0, len(indptr) - 1
    while lo < n_rows:
        hi = int(np.searchsorted(indptr, indptr[lo] + chunk, side="right")) - 1
        hi = min(max(hi, lo + 1), n_rows)
        bounds.append((lo, hi))
        lo = hi
    return bounds
