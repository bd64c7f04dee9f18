"""Sparse helpers the neighbourhood, transition and content models share: recency weights and top-N rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recsys.models.base import UserContext


def recent_weights(
    users: Sequence[UserContext],
    n_items: int,
    last: int,
    decay: float,
    kind_weights: np.ndarray | None = None,
) -> sp.csr_matrix:
    """(users x items): each user's latest `last` events, the newest weighing 1 and each older one `decay` times less.

    `kind_weights[k]` scales an event of type k (a purchase says more than a view); repeats add up.
    """
    rows, cols, vals = [], [], []
    for r, ctx in enumerate(users):
        items = ctx.recent[-last:] if last else ctx.recent[:0]
        keep = items < n_items
        if not keep.any():
            continue
        age = np.arange(len(items) - 1, -1, -1, dtype=np.float64)
        w = decay**age
        if kind_weights is not None and len(ctx.recent_kinds):
            w = w * kind_weights[np.asarray(ctx.recent_kinds[-last:], dtype=np.int64)]
        rows.append(np.full(int(keep.sum()), r))
        cols.append(items[keep])
        vals.append(w[keep])
    if not rows:
        return sp.csr_matrix((len(users), n_items), dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(len(users), n_items), dtype=np.float64)  # fmt: skip
    out.sum_duplicates()
    return out.astype(np.float32)


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
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(len(users), n_items), dtype=np.float64)  # fmt: skip
    out.sum_duplicates()
    return out.astype(np.float32)


def top_n_per_row(matrix: sp.spmatrix, n: int) -> sp.csr_matrix:
    """Keep the n largest entries of each row (a neighbourhood); the rest become zeros. Diagonal entries are dropped."""
    m = sp.csr_matrix(matrix, dtype=np.float32)
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


def kind_weights(event_types: Sequence[str], weights: dict[str, float]) -> np.ndarray:
    """Weight per event-type position (unknown types weigh 1)."""
    return np.array([weights.get(t, 1.0) for t in event_types], dtype=np.float64)
