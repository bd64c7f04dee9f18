"""Sparse helpers the neighbourhood, transition and content models share: recency weights and top-N rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse._sparsetools import (  # the routines behind scipy's COO -> CSR
    coo_tocsr,
    csr_has_canonical_format,
    csr_has_sorted_indices,
    csr_sort_indices,
    csr_sum_duplicates,
)

from recsys.data.inputs import UserContext
from recsys.models.sparse_product import trusted_csr


def recent_weights(
    users: Sequence[UserContext],
    n_items: int,
    last: int,
    decay: float,
    kind_weights: np.ndarray | None = None,
    tie_ms: int = 0,
) -> sp.csr_matrix:
    """(users x items): each user's latest `last` events, the newest weighing 1 and each older one `decay` times less.

    Age counts events (`tie_ms` 0) or distinct time windows: with `tie_ms` > 0 an event's age is
    the number of distinct windows ts // tie_ms after its own among those events, so events in one
    window (a page of ratings submitted at once, whose order in the data says nothing) weigh the
    same. `kind_weights[k]` scales an event of type k (a purchase says more than a view); repeats add up.

    The matrix `_recent_weights_coo` defines (scipy's COO constructor, repeats summed in float64, then
    float32), built by the same C routines without scipy's Python layers: this runs once per component
    per request, and those layers cost more than the product it feeds.
    """
    rows, cols, vals = _triplets(users, n_items, last, decay, kind_weights, tie_ms)
    return _canonical_csr(rows, cols, vals, (len(users), n_items))


def _triplets(
    users: Sequence[UserContext],
    n_items: int,
    last: int,
    decay: float,
    kind_weights: np.ndarray | None,
    tie_ms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, item, weight) of every user's latest `last` events of the model's items, row by row."""
    rows, cols, vals = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)], [np.zeros(0, np.float64)]
    for r, ctx in enumerate(users):
        items = ctx.recent[-last:] if last else ctx.recent[:0]
        keep = items < n_items
        if not keep.any():
            continue
        w = decay ** event_ages(ctx.recent_ts_ms[-last:] if last else ctx.recent_ts_ms[:0], len(items), tie_ms)
        if kind_weights is not None and len(ctx.recent_kinds):
            w = w * kind_weights[np.asarray(ctx.recent_kinds[-last:], dtype=np.int64)]
        rows.append(np.full(int(keep.sum()), r, dtype=np.int32))
        cols.append(items[keep].astype(np.int32))
        vals.append(np.asarray(w, dtype=np.float64)[keep])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _canonical_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """`csr_matrix((vals, (rows, cols)), shape, dtype=float64).astype(float32)` step for step: COO to CSR, rows
    sorted if they are not, repeats summed in that order (scipy's `tocsr` and `sum_duplicates`), so every value
    is the same bit for bit."""
    m, n = shape
    nnz = len(vals)
    if nnz == 0:
        return sp.csr_matrix(shape, dtype=np.float32)
    indptr, indices, data = np.empty(m + 1, np.int32), np.empty(nnz, np.int32), np.empty(nnz, np.float64)
    coo_tocsr(m, n, nnz, rows, cols, vals, indptr, indices, data)
    if not csr_has_canonical_format(m, indptr, indices):
        if not csr_has_sorted_indices(m, indptr, indices):
            csr_sort_indices(m, indptr, indices, data)
        csr_sum_duplicates(m, n, indptr, indices, data)
        stored = int(indptr[-1])
        indices, data = indices[:stored], data[:stored]
    out = trusted_csr(data.astype(np.float32), indices, indptr, shape)
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def _recent_weights_coo(
    users: Sequence[UserContext],
    n_items: int,
    last: int,
    decay: float,
    kind_weights: np.ndarray | None = None,
    tie_ms: int = 0,
) -> sp.csr_matrix:
    """`recent_weights` through scipy's COO constructor (the original definition of the matrix)."""
    rows, cols, vals = [], [], []
    for r, ctx in enumerate(users):
        items = ctx.recent[-last:] if last else ctx.recent[:0]
        keep = items < n_items
        if not keep.any():
            continue
        w = decay ** event_ages(ctx.recent_ts_ms[-last:] if last else ctx.recent_ts_ms[:0], len(items), tie_ms)
        if kind_weights is not None and len(ctx.recent_kinds):
            w = w * kind_weights[np.asarray(ctx.recent_kinds[-last:], dtype=np.int64)]
        rows.append(np.full(int(keep.sum()), r))
        cols.append(items[keep])
        vals.append(w[keep])
    if not rows:
        return sp.csr_matrix((len(users), n_items), dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(users), n_items),
        dtype=np.float64,
    )
    out.sum_duplicates()
    return out.astype(np.float32)


def event_ages(ts_ms: np.ndarray, n: int, tie_ms: int = 0) -> np.ndarray:
    """Age of each of n events (oldest first) counted from the newest: in events, or in distinct tie windows.

    With `tie_ms` > 0 (and a timestamp per event) the age is the number of distinct windows
    ts // tie_ms newer than the event's own, so ties share an age; otherwise n-1, ..., 1, 0.
    """
    if tie_ms > 0 and len(ts_ms) == n and n:
        window = np.asarray(ts_ms, dtype=np.int64) // tie_ms
        group = np.concatenate([[0], np.cumsum(np.diff(window) != 0)])
        return (group[-1] - group).astype(np.float64)
    return np.arange(n - 1, -1, -1, dtype=np.float64)


def tie_groups(user: np.ndarray, ts_ms: np.ndarray, tie_ms: int, sequence: np.ndarray | None = None) -> np.ndarray:
    """A global group number per event of an ordered log: a new group at each user (or sequence) change and at
    each new tie window ts // tie_ms (each event its own group when `tie_ms` is 0). Groups are consecutive."""
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.ones(n, dtype=bool)
    key = sequence if sequence is not None else user
    start[1:] = key[1:] != key[:-1]
    if tie_ms > 0:
        window = np.asarray(ts_ms, dtype=np.int64) // tie_ms
        start[1:] |= window[1:] != window[:-1]
    else:
        start[1:] = True
    return np.cumsum(start) - 1


def history_weights(users: Sequence[UserContext], n_items: int, binary: bool = False) -> sp.csr_matrix:
    """(users x items): each user's whole history r_ui (or 1 where r_ui > 0)."""
    rows, cols, vals = [], [], []
    for r, ctx in enumerate(users):
        keep = (ctx.items < n_items) & (ctx.strengths > 0)
        rows.append(np.full(int(keep.sum()), r))
        cols.append(ctx.items[keep])
        vals.append(np.ones(int(keep.sum())) if binary else ctx.strengths[keep])
    if not users:
        return sp.csr_matrix((0, n_items), dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(users), n_items),
        dtype=np.float64,
    )
    out.sum_duplicates()
    return out.astype(np.float32)


def top_n_per_row(matrix: sp.spmatrix, n: int, drop_diagonal: bool = True) -> sp.csr_matrix:
    """Keep the n largest entries of each row (a neighbourhood); the rest become zeros. Diagonal entries are dropped
    (unless `drop_diagonal` is False: rows and columns are different things, e.g. users x training users)."""
    m = sp.csr_matrix(matrix, dtype=np.float32)
    if drop_diagonal:
        m.setdiag(0)
    m.eliminate_zeros()
    counts = np.diff(m.indptr)
    if n <= 0 or counts.max(initial=0) <= n:
        return m
    data, indices, indptr = [], [], [0]
    for r in range(m.shape[0]):
        start, end = m.indptr[r], m.indptr[r + 1]
        row_data, row_idx = m.data[start:end], m.indices[start:end]
        if end - start > n:
            keep = np.argpartition(-row_data, n - 1)[:n]
            keep.sort()
            row_data, row_idx = row_data[keep], row_idx[keep]
        data.append(row_data)
        indices.append(row_idx)
        indptr.append(indptr[-1] + len(row_data))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=m.shape)


def dense(matrix: sp.spmatrix) -> np.ndarray:
    return np.asarray(matrix.todense(), dtype=np.float32)


def sorted_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The matrix as CSR with each row's columns sorted (what two-stage serving reads: `hybrid/candidates.py`)."""
    out = matrix.tocsr()
    out.sort_indices()
    return out


def kind_weights(event_types: Sequence[str], weights: dict[str, float]) -> np.ndarray:
    """Weight per event-type position (unknown types weigh 1)."""
    return np.array([weights.get(t, 1.0) for t in event_types], dtype=np.float64)
