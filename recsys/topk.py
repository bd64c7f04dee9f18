"""Top-k retrieval over factor models and popularity: shared by evaluation, serving and benchmarks.

Everything is vectorised: a batch of users costs one matrix product and one
`np.partition` of its values, so memory stays bounded by `batch_size × n_items` scores
whatever the number of users.

Output convention (all functions): item indices best first, `int64`, and their
scores, `float32`. When a row has fewer than k rankable items (the rest are
excluded or the catalogue is small) the row is padded with index -1 and score
-inf. Equal scores are ordered by ascending item index, at the k-th place too
(`select_top`, `top_k`); `top_k_of_scores` may break a tie at the k-th place either way.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

PAD = -1  # index used for "no item" in padded rows


def _select_rows(m: int) -> int:
    """Rows per selection slice: about 2M scores (16 MB of int64 indices) at a time."""
    return max(1, (1 << 21) // max(1, m))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _mask_excluded(scores: np.ndarray, exclude: sp.csr_matrix | None) -> None:
    """Set excluded (row, item) entries of a score block to -inf, in place."""
    if exclude is None or exclude.nnz == 0:
        return
    coo = exclude.tocoo()
    # Explicit zeros stored in the sparse matrix do not count as "exclude".
    keep = coo.data != 0
    scores[coo.row[keep], coo.col[keep]] = -np.inf


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """`np.unique` of a 1-D array by one sort: numpy 2's hashing `unique` is ~3x slower on the few thousand mostly
    distinct keys of a request's candidates."""
    s = np.sort(values)
    return s[np.concatenate([[True], s[1:] != s[:-1]])] if len(s) else s


def select_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of a score block, best first, padded where scores are -inf.

    Exactly the first k of a stable descending sort of each row (`full_sort_top_k`): of items tied at the
    k-th place, the lowest columns win. NaN scores are treated as -inf.
    """
    n, m = scores.shape
    kk = min(k, m)
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), np.float32(-np.inf), scores)
    if kk < m:
        cols, vals = _candidates(scores, kk)
    else:
        cols, vals = np.broadcast_to(np.arange(m), (n, m)), scores
    # Sort by score descending, then by item index, so equal scores come out in a stable order.
    order = np.lexsort((cols, -vals), axis=1)[:, :kk]
    idx = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    val = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    # -inf means excluded (or nothing to rank): it is padding, never a recommendation.
    idx[np.isneginf(val)] = PAD
    if kk < k:
        idx = np.hstack([idx, np.full((n, k - kk), PAD, dtype=np.int64)])
        val = np.hstack([val, np.full((n, k - kk), -np.inf, dtype=np.float32)])
    return idx, val


# Rows with more candidates than this (heavy ties at the sample's bound, or few finite scores) are cut exactly.
_CANDIDATES_MAX = 512


def _candidates(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, a few columns that hold its kk best (ties at the cut included, lowest columns first), packed
    into (n, width) columns and scores, padded with column m and -inf (which sort after every real entry).

    The kk-th best of a strided sample is a lower bound of the row's kk-th best, so every top-kk entry scores
    at least that: one comparison pass keeps ~`_SAMPLE_STRIDE` x kk entries per row, where `np.argpartition` of
    the whole block (which moves an int64 index with every value) cost 5x more (512 x 50,000 float32). Rows
    that keep too many are cut at their exact kk-th value by `np.partition`, and their ties at it thinned to
    the lowest columns that fill kk.
    """
    n, m = scores.shape
    sample = scores[:, ::_SAMPLE_STRIDE]
    if sample.shape[1] > 4 * kk:
        bound = np.partition(sample, sample.shape[1] - kk, axis=1)[:, sample.shape[1] - kk : sample.shape[1] - kk + 1]
        keep = scores >= bound
    else:
        keep = np.ones((n, m), dtype=bool)
    counts = keep.sum(axis=1)
    crowded = np.flatnonzero(counts > max(_CANDIDATES_MAX, 4 * kk))
    if crowded.size:
        keep[crowded] = _exact_cut(scores[crowded], kk)
        counts[crowded] = kk
    flat = np.flatnonzero(keep)  # one index array, not two: half the cost of np.nonzero
    rows, cols = np.divmod(flat, m)
    width = int(counts.max())
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    packed_cols = np.full((n, width), m, dtype=np.int64)
    packed_vals = np.full((n, width), -np.inf, dtype=scores.dtype)
    packed_cols[rows, slot] = cols
    packed_vals[rows, slot] = scores[rows, cols]
    return packed_cols, packed_vals


def _exact_cut(scores: np.ndarray, kk: int) -> np.ndarray:
    """Mask of each row's kk best entries: those above its kk-th value, then its ties at it, lowest columns first."""
    m = scores.shape[1]
    cut = np.partition(scores, m - kk, axis=1)[:, m - kk : m - kk + 1]
    above = scores > cut
    tied = scores == cut
    wanted = kk - above.sum(axis=1)  # >= 1: the cut itself is tied
    tied &= np.cumsum(tied, axis=1) <= wanted[:, None]
    return above | tied


def _check_exclude(exclude: sp.csr_matrix | None, n: int, m: int) -> sp.csr_matrix | None:
    if exclude is None:
        return None
    if exclude.shape != (n, m):
        raise ValueError(f"exclude has shape {exclude.shape}, expected {(n, m)}")
    return sp.csr_matrix(exclude)


def top_k(
    user_vectors: np.ndarray,
    item_factors: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """The k items with the highest score x_u · y_i for each user vector.

    `user_vectors` is n×r, `item_factors` m×r; `exclude` (n×m, nonzero = do not
    recommend, e.g. already seen) is optional. Returns (n×k int64 indices, n×k
    float32 scores), best first, padded with -1 / -inf.
    """
    _check_k(k)
    users = np.asarray(user_vectors, dtype=np.float32)
    items = np.asarray(item_factors, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"factor shapes do not match: users {users.shape}, items {items.shape}")
    n, m = users.shape[0], items.shape[0]
    exclude = _check_exclude(exclude, n, m)
    out_idx = np.full((n, k), PAD, dtype=np.int64)
    out_val = np.full((n, k), -np.inf, dtype=np.float32)
    items_t = np.ascontiguousarray(items.T)  # transposed once, reused by every batch
    for start in range(0, n, max(1, batch_size)):
        stop = min(n, start + max(1, batch_size))
        scores = users[start:stop] @ items_t
        _mask_excluded(scores, None if exclude is None else exclude[start:stop])
        # Selection runs on slices of rows: it copies the values and makes two masks as large as its input.
        step_rows = _select_rows(m)
        for lo in range(start, stop, step_rows):
            hi = min(stop, lo + step_rows)
            block = scores[lo - start : hi - start]
            # NaN would sort unpredictably; treat it as "cannot be ranked".
            block[np.isnan(block)] = -np.inf
            out_idx[lo:hi], out_val[lo:hi] = select_top(block, k)
        del scores, block  # freed before the next batch's block is allocated: one block alive at a time
    return out_idx, out_val


def top_k_of_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best entries of one precomputed score vector (NaN counts as -inf), same output as one row of `top_k`.

    For callers that score themselves (the serving layer masks filters into the scores).
    Exact, and faster than one `argpartition` over everything: the k-th best score of
    any subset is a lower bound of the k-th best overall, so every top-k entry scores
    at least that; only the few entries above it are partitioned.
    """
    _check_k(k)
    scores = np.asarray(scores, dtype=np.float32).ravel()
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), np.float32(-np.inf), scores)
    sample = scores[::_SAMPLE_STRIDE]
    if sample.size > 4 * k:
        bound = np.partition(sample, sample.size - k)[sample.size - k]
        if np.isfinite(bound):
            candidates = np.flatnonzero(scores >= bound)
            idx, val = select_top(scores[candidates][None, :], k)
            return np.where(idx[0] == PAD, PAD, candidates[np.maximum(idx[0], 0)]), val[0]
    idx, val = select_top(scores[None, :], k)
    return idx[0], val[0]


_SAMPLE_STRIDE = 16


def full_sort_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The naive baseline of `top_k_of_scores`: sort every score. Same answer, O(m log m); for benchmarks."""
    _check_k(k)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")[:k]
    idx, val = order.astype(np.int64), np.asarray(scores, dtype=np.float32)[order]
    keep = ~np.isneginf(val) & ~np.isnan(val)
    pad = k - int(keep.sum())
    return np.r_[idx[keep], np.full(pad, PAD)], np.r_[val[keep], np.full(pad, -np.inf, dtype=np.float32)]


def top_k_popular(
    popularity: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    n_rows: int | None = None,
    batch_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most popular items for each row, skipping that row's excluded items.

    Rows: `exclude.shape[0]` if given, else `n_rows` (default 1). Same output as
    `top_k`. Only the `k + (most exclusions in a row)` globally most popular
    items can ever be chosen, so only those candidates are looked at: no n×m
    block is built, however large the catalogue.
    """
    _check_k(k)
    pop = np.asarray(popularity, dtype=np.float64).ravel()
    m = pop.shape[0]
    n = exclude.shape[0] if exclude is not None else (1 if n_rows is None else n_rows)
    exclude = _check_exclude(exclude, n, m)
    if exclude is not None:
        exclude = exclude.copy()
        exclude.eliminate_zeros()
    # Global order: popularity descending, ties by item index (deterministic).
    order = np.lexsort((np.arange(m), -pop))
    order = order[~np.isnan(pop[order]) & ~np.isneginf(pop[order])]
    max_excl = 0 if exclude is None or n == 0 else int(np.diff(exclude.indptr).max())
    cand = order[: k + max_excl]
    out_idx = np.full((n, k), PAD, dtype=np.int64)
    out_val = np.full((n, k), -np.inf, dtype=np.float32)
    step = max(1, batch_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        if exclude is None:
            blocked = np.zeros((stop - start, cand.size), dtype=bool)
        else:
            blocked = exclude[start:stop][:, cand].toarray() != 0
        # Stable sort of the "blocked" flags keeps candidates in popularity order, free ones first.
        pick = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        ok = ~np.take_along_axis(blocked, pick, axis=1)
        width = pick.shape[1]
        out_idx[start:stop, :width] = np.where(ok, cand[pick], PAD)
        out_val[start:stop, :width] = np.where(ok, pop[cand[pick]], -np.inf)
    return out_idx, out_val


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine with anything is 0)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def similar_items(item_factors: np.ndarray, item_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k items most similar to one item by cosine, cos(i, j) = y_i·y_j / (|y_i| |y_j|), itself excluded.

    Returns 1-D (k,) int64 indices and float32 scores, padded with -1 / -inf.
    """
    _check_k(k)
    m = item_factors.shape[0]
    if not 0 <= item_index < m:
        raise IndexError(f"item index {item_index} out of range for {m} items")
    unit = normalize_rows(item_factors)
    itself = sp.csr_matrix(([1.0], ([0], [item_index])), shape=(1, m))
    idx, val = top_k(unit[item_index : item_index + 1], unit, k, exclude=itself)
    return idx[0], val[0]


def most_similar(unit: np.ndarray, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k items whose unit-length rows have the largest positive cosine with `item`'s (the item itself left out)."""
    if item >= len(unit) or not unit[item].any():
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = unit @ unit[item]
    scores[item] = -np.inf
    idx, val = top_k_of_scores(scores, k)
    keep = (idx >= 0) & (val > 0)
    return idx[keep], val[keep]
