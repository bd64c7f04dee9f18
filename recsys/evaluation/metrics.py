"""Top-k ranking metrics with binary relevance, computed per user and averaged over users.

Inputs shared by every function:

- `recommended`: n×k int array of item indices, best first; -1 is padding (no item).
  A row is assumed to hold each item at most once.
- `relevant`: n×m sparse matrix, nonzero = item is relevant for that row (held-out test items).
  rel_u is that set, rel_{u,i} = 1 if the item at rank i is in rel_u.

Only users with at least one relevant item are evaluated (`ranking_metrics`
drops the others); the per-user functions expect |rel_u| >= 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

# scores_fn(user_rows) -> dense (len(user_rows) × n_items) scores for those rows of the test matrix.
ScoresFn = Callable[[np.ndarray], np.ndarray]


def canonical(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Canonical CSR with explicit zeros removed, so nonzero pattern = relevance."""
    out = sp.csr_matrix(matrix, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def hits(recommended: np.ndarray, relevant: sp.spmatrix) -> np.ndarray:
    """n×k bool: rel_{u,i} = 1 if the item recommended to row u at rank i is relevant (padding never is)."""
    rec = np.asarray(recommended, dtype=np.int64)
    rel = canonical(relevant)
    n, m = rel.shape
    if rec.ndim != 2 or rec.shape[0] != n:
        raise ValueError(f"recommended has shape {rec.shape}, expected ({n}, k)")
    if rec.size and (rec.max() >= m or rec.min() < -1):
        raise ValueError(f"recommended item indices must be in [-1, {m}), got [{rec.min()}, {rec.max()}]")
    if rel.nnz == 0:
        return np.zeros(rec.shape, dtype=bool)
    # Encode (row, item) pairs as one int64 key; canonical CSR keys are sorted, so one searchsorted finds them.
    rel_keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(rel.indptr)) * m + rel.indices
    rec_keys = np.arange(n, dtype=np.int64)[:, None] * m + np.maximum(rec, 0)
    pos = np.minimum(np.searchsorted(rel_keys, rec_keys), rel_keys.size - 1)
    return (rel_keys[pos] == rec_keys) & (rec >= 0)


def n_relevant(relevant: sp.spmatrix) -> np.ndarray:
    """|rel_u| per row."""
    return np.diff(canonical(relevant).indptr)


def _denominator(k: int, n_rel: np.ndarray) -> np.ndarray:
    """min(k, |rel_u|): the most hits a list of k can achieve, so a perfect list scores 1."""
    return np.minimum(k, n_rel).astype(np.float64)


def precision_at_k(h: np.ndarray) -> np.ndarray:
    """P@k = |rec_u ∩ rel_u| / k (padding counts as a miss)."""
    return h.sum(axis=1) / h.shape[1]


def recall_at_k(h: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """R@k = |rec_u ∩ rel_u| / min(k, |rel_u|) (so a user with fewer than k held-out items can reach 1)."""
    return h.sum(axis=1) / _denominator(h.shape[1], n_rel)


def f1_at_k(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1@k = 2·P·R / (P + R) per user, 0 where P = R = 0."""
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)


def _discounts(k: int) -> np.ndarray:
    """1 / log2(i + 1) for ranks i = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(h: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """NDCG@k = DCG / IDCG, DCG = Σ_{i=1..k} rel_i / log2(i+1), IDCG = Σ_{i=1..min(k,|rel_u|)} 1 / log2(i+1)."""
    disc = _discounts(h.shape[1])
    dcg = h @ disc
    idcg = np.cumsum(disc)[np.minimum(h.shape[1], n_rel) - 1]
    return dcg / idcg


def average_precision_at_k(h: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """AP@k = Σ_{i=1..k} P@i · rel_i / min(k, |rel_u|), with P@i = (hits in the first i) / i. MAP@k is its mean."""
    k = h.shape[1]
    prec_at_i = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return (prec_at_i * h).sum(axis=1) / _denominator(k, n_rel)


def coverage_at_k(recommended: np.ndarray, n_items: int) -> float:
    """Catalogue coverage@k = |∪_u rec_u| / n_items: the share of the catalogue recommended to anyone."""
    rec = np.asarray(recommended)
    if n_items == 0:
        return 0.0
    return float(np.unique(rec[rec >= 0]).size / n_items)


def per_user_metrics(recommended: np.ndarray, relevant: sp.spmatrix) -> dict[str, np.ndarray]:
    """precision, recall, f1, ndcg, ap per row of `recommended` (every row must have |rel_u| >= 1)."""
    h = hits(recommended, relevant)
    n_rel = n_relevant(relevant)
    if np.any(n_rel == 0):
        raise ValueError("every evaluated row needs at least one relevant item")
    p, r = precision_at_k(h), recall_at_k(h, n_rel)
    return {
        "precision": p,
        "recall": r,
        "f1": f1_at_k(p, r),
        "ndcg": ndcg_at_k(h, n_rel),
        "ap": average_precision_at_k(h, n_rel),
    }


def auc_per_user(
    scores_fn: ScoresFn,
    relevant: sp.spmatrix,
    train: sp.spmatrix | None = None,
    users: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """AUC_u = P(s_ui > s_uj) over i ∈ rel_u \\ train_u and j ∉ rel_u ∪ train_u, ties counted 1/2.

    That is AUC_u = Σ_{i∈P} (#{j∈N: s_j < s_i} + ½·#{j∈N: s_j = s_i}) / (|P|·|N|).
    One batch of users at a time, so at most `batch_size × n_items` (and ~4M)
    scores exist at once. Each positive is compared with the row's negatives
    (or, for users with many positives, located by binary search in the sorted
    negatives), so no full ranking is built. Scores must be finite. NaN
    where a user has no positive or no negative. `users` are row indices of
    `relevant`/`train` (default: all rows); `scores_fn` receives those indices.
    """
    rel = canonical(relevant)
    n, m = rel.shape
    seen = canonical(train) if train is not None else sp.csr_matrix((n, m), dtype=np.float32)
    if seen.shape != (n, m):
        raise ValueError(f"train has shape {seen.shape}, expected {(n, m)}")
    rows = np.arange(n) if users is None else np.asarray(users, dtype=np.int64)
    out = np.full(rows.size, np.nan)
    step = auc_block_rows(m, batch_size)
    for start in range(0, rows.size, step):
        batch = rows[start : start + step]
        scores = auc_block(scores_fn(batch))  # a private copy: auc_of_block overwrites it
        out[start : start + batch.size] = auc_of_block(scores, rel[batch], seen[batch])
    return out


def auc_block_rows(n_items: int, batch_size: int = 1024) -> int:
    """Rows of scores per AUC block: sorting allocates arrays the size of the block, so ~4M scores (32 MB) at most."""
    return max(1, min(batch_size, (1 << 22) // max(1, n_items)))


def auc_block(scores: np.ndarray) -> np.ndarray:
    """A private, row-major copy of a score block for `auc_of_block`, in its own precision (at least float32).

    Comparing float32 scores in float32 decides every pair as float64 would (the conversion is exact) at half
    the memory traffic; float64 scores stay float64, so no tie is made that the model did not make. Row-major,
    because the rows are compared one at a time: a column-major block (as `np.array` keeps a broadcast
    model's layout) made each comparison 3x slower.
    """
    return np.array(scores, dtype=np.result_type(np.asarray(scores).dtype, np.float32), order="C")


def auc_of_block(scores: np.ndarray, relevant: sp.csr_matrix, seen: sp.csr_matrix) -> np.ndarray:
    """AUC_u (as `auc_per_user`) of each row of a finite float score block (`auc_block`), given the same rows'
    relevant and train items (canonical CSR); NaN where a row has no positive or no negative. `scores` is
    overwritten."""
    if scores.shape != relevant.shape:
        raise ValueError(f"scores have shape {scores.shape}, expected {relevant.shape}")
    seen_b = seen.astype(bool).toarray()
    pos_b = relevant.astype(bool).toarray() & ~seen_b
    pos_scores = [scores[r, pos_b[r]] for r in range(scores.shape[0])]
    # Train items and positives are not negatives: NaN compares False and sorts last, which drops them.
    scores[seen_b | pos_b] = np.nan
    n_neg = scores.shape[1] - (seen_b | pos_b).sum(axis=1)
    out = np.full(scores.shape[0], np.nan)
    for r in range(scores.shape[0]):
        if pos_scores[r].size and n_neg[r]:
            out[r] = _auc_row(scores[r], pos_scores[r], int(n_neg[r]))
    return out


# Up to this many positives, comparing each with every score beats sorting the row (measured at 50k items).
_COMPARE_MAX_POSITIVES = 32


def _auc_row(candidates: np.ndarray, positives: np.ndarray, n_neg: int) -> float:
    """Pairs won (+½ per tie) by positives over the non-NaN `candidates`, divided by |P|·|N|."""
    below: int | np.integer
    tied: int | np.integer
    if positives.size <= _COMPARE_MAX_POSITIVES:
        below = np.count_nonzero(candidates < positives[:, None])
        tied = np.count_nonzero(candidates == positives[:, None])
    else:
        negatives = np.sort(candidates)[:n_neg]
        lo = np.searchsorted(negatives, positives, side="left")
        below = int(lo.sum())
        tied = int((np.searchsorted(negatives, positives, side="right") - lo).sum())
    return (below + 0.5 * tied) / (positives.size * n_neg)


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.spmatrix,
    users: np.ndarray | None = None,
    scores_fn: ScoresFn | None = None,
    train: sp.spmatrix | None = None,
    batch_size: int = 1024,
    auc: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean metrics at k = recommended.shape[1] over the users with at least one relevant item.

    `relevant` (and `train`) are full n×m matrices; `users` are the rows that
    `recommended` holds lists for (default: all rows, in order). AUC needs
    `scores_fn`, or `auc`: the per-user AUC of those rows, already computed from the
    scores the lists came from (NaN without either). Keys: precision@k, recall@k,
    f1@k, ndcg@k, map@k, auc, coverage@k, n_users.
    """
    rel = canonical(relevant)
    n, m = rel.shape
    rows = np.arange(n) if users is None else np.asarray(users, dtype=np.int64)
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.ndim != 2 or rec.shape[0] != rows.size:
        raise ValueError(f"recommended has shape {rec.shape}, expected ({rows.size}, k)")
    k = rec.shape[1]
    # Users without held-out items have nothing to find: they would add zeros that say nothing about the model.
    has_rel = np.diff(rel.indptr)[rows] > 0
    rows, rec = rows[has_rel], rec[has_rel]
    given_auc = None if auc is None else np.asarray(auc, dtype=np.float64)[has_rel]
    out: dict[str, float] = {}
    if rows.size == 0:
        for name in ("precision", "recall", "f1", "ndcg", "map"):
            out[f"{name}@{k}"] = float("nan")
        out.update({"auc": float("nan"), f"coverage@{k}": 0.0, "n_users": 0})
        return out
    per_user = per_user_metrics(rec, rel[rows])
    for name, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1"), ("ndcg", "ndcg"), ("map", "ap")):
        out[f"{name}@{k}"] = float(per_user[key].mean())
    if given_auc is None and scores_fn is not None:
        given_auc = auc_per_user(scores_fn, rel, train, users=rows, batch_size=batch_size)
    if given_auc is None or not np.any(~np.isnan(given_auc)):
        out["auc"] = float("nan")
    else:
        out["auc"] = float(np.nanmean(given_auc))
    out[f"coverage@{k}"] = coverage_at_k(rec, m)
    out["n_users"] = int(rows.size)
    return out
