"""Exact top-k of inner products that reads only the items that can still win: blocks in decreasing norm order.

A factor model scores item i for user x as x·y_i. By Cauchy–Schwarz x·y_i ≤ |x|·|y_i|,
so once k allowed items score T, no item with |x|·|y_i| < T can enter the top k. The
items are kept sorted by decreasing norm in blocks; a batch of users walks the blocks
from the largest norms down, one matrix product per block for the users still active,
and each user stops at the first block whose largest norm cannot reach their current
k-th score. On ALS factors the norms follow popularity, so the top 10 usually come from
the first block or two: a request reads ~1-3% of the item matrix instead of all of it
(`bench/serving.py` reports the bytes actually read). On factors where the bound prunes
nothing (random vectors, a zero user vector) every block is read: slower, never wrong.

Exact against a fixed definition of the fp32 score c(x, y) (`canonical_scores`): the
float32 products x_j·y_j (IEEE, one rounding each) summed in float32 by numpy's row
reduction, whose order depends only on the rank. Every item's score is the same
sequence of operations whatever else is in the batch, so equal
vectors score equal and an answer never depends on its neighbours in a micro-batch
(a BLAS product's rounding depends on blocking and on which rows are in the call).
The block scan uses BLAS products; both they and `c` are within
E = γ·|x|·max|y| of the real x·y (γ = 1e-5 > 64·2⁻²⁴, the float32 bound for rank ≤ 64
with room; larger ranks scale it). With T the k-th best BLAS score among allowed
items seen, every item whose BLAS score is below T − 4E is beaten by k items in `c`
too, so the candidates {BLAS score ≥ T − 4E} contain the exact top k; they are
re-scored with `c` and sorted by (score descending, item position ascending), the
order of `recsys.topk.full_sort_top_k`. A block is skipped only when
|x|·max|y in block| + E < T − 4E.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

BLOCK = 1024
GROUP = 8  # columns per group of `merge_k_best`'s shortcut: 128 groups per block
GROUPED_FROM = 16  # rows of a block from which the scan goes through the groups (see `top_k`)


def gamma(rank: int) -> float:
    """A float32 relative error bound of a rank-term dot product (any summation order, FMA or not), with room."""
    u = 2.0**-24
    return max(1e-5, 2.0 * rank * u / (1.0 - rank * u))


def canonical_scores(vectors: np.ndarray, items: np.ndarray) -> np.ndarray:
    """c(x_r, y_r) for row pairs (n × rank each): float32 products, each row summed by one fixed-order reduction."""
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(items, dtype=np.float32)
    products = np.multiply(x, y, dtype=np.float32)  # a fresh C-contiguous (n, rank) array
    return np.add.reduce(products, axis=1, dtype=np.float32)


# Pairs scored per step of `canonical_pairs`: its two gathered blocks (1 MB each at rank 64) stay in cache and in
# reused buffers; a request's ~20,000 pairs at once went to fresh pages, 2-4x slower for the same values.
PAIR_CHUNK = 4096


def canonical_pairs(vectors: np.ndarray, rows: np.ndarray, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """c(vectors[rows[j]], items[positions[j]]) for each j: `canonical_scores` of the gathered pairs, chunk by chunk."""
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(items, dtype=np.float32)
    out = np.empty(len(rows), np.float32)
    size = min(len(rows), PAIR_CHUNK)
    left, right = np.empty((size, y.shape[1]), np.float32), np.empty((size, y.shape[1]), np.float32)
    for lo in range(0, len(rows), PAIR_CHUNK):
        hi = min(lo + PAIR_CHUNK, len(rows))
        a, b = left[: hi - lo], right[: hi - lo]
        np.take(x, rows[lo:hi], axis=0, out=a)
        np.take(y, positions[lo:hi], axis=0, out=b)
        np.multiply(a, b, out=a)
        np.add.reduce(a, axis=1, dtype=np.float32, out=out[lo:hi])
    return out


def canonical_all(vector: np.ndarray, items: np.ndarray) -> np.ndarray:
    """c(x, y_i) for one vector against every row of `items` (the reference full scan)."""
    y = np.asarray(items, dtype=np.float32)
    products = np.multiply(y, np.asarray(vector, dtype=np.float32)[None, :], dtype=np.float32)
    return np.add.reduce(products, axis=1, dtype=np.float32)


class NormIndex:
    """The item factors sorted by decreasing norm, in blocks, for `top_k` (see the module doc)."""

    def __init__(
        self, factors: np.ndarray, block: int = BLOCK, group: int = GROUP, grouped_from: int = GROUPED_FROM
    ) -> None:
        f = np.asarray(factors, dtype=np.float32)
        norms = np.linalg.norm(f.astype(np.float64), axis=1) if len(f) else np.zeros(0)
        self.n, self.rank = f.shape
        self.order = np.argsort(-norms, kind="stable").astype(np.int64)
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(self.n)
        self.sorted = np.ascontiguousarray(f[self.order])
        self.block = block
        self.group = group
        self.grouped_from = grouped_from
        self.starts = np.arange(0, self.n, block)
        self.block_max = norms[self.order][self.starts] if self.n else np.zeros(0)
        self.max_norm = float(norms.max(initial=0.0))
        self.gamma = gamma(self.rank)
        self.last_blocks_read = 0  # row-blocks read by the latest call (for the benchmark's bytes per request)

    @property
    def nbytes(self) -> int:
        return self.sorted.nbytes

    def pair_scores(self, vectors: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """c(x_rows[j], y_items[j]) for (row, item) pairs: the values `top_k` returns."""
        return canonical_pairs(vectors, rows, self.sorted, self.position[items])

    def top_k(
        self,
        vectors: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray | None],
        allowed: Sequence[np.ndarray | None],
        new_states: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row of `vectors`: the k best item positions (new items numbered after the model's) and their scores c.

        `exclude[r]`: positions never to return; `allowed[r]`: a boolean mask over all positions (or None).
        Exactly `full_sort_top_k` of `c` over the allowed items, fewer than k only if fewer are allowed.
        """
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        b = len(x)
        if b == 0:
            return []
        n_new = 0 if new_states is None else len(new_states)
        xn = np.linalg.norm(x.astype(np.float64), axis=1)
        new_max = float(np.linalg.norm(np.asarray(new_states, np.float64), axis=1).max()) if n_new else 0.0
        y_max = max(self.max_norm, new_max)
        # E per row; the absolute term covers products that underflow (or subnormals a BLAS treats as zero).
        err = self.gamma * xn * y_max + self.rank * 2.0**-126 * (xn + y_max + 1.0)
        kth = np.full((b, k), -np.inf, np.float32)  # the k best BLAS scores among allowed items seen, per row
        thr = np.full(b, -np.inf)
        # Excluded model items as (row, sorted position) pairs, once per batch.
        ex_rows, ex_pos = _pairs(exclude, self.n)
        ex_pos = self.position[ex_pos]
        filtered = [r for r in range(b) if allowed[r] is not None]
        rows_c, pos_c, score_c = [], [], []
        blocks_read = 0
        for bi, lo in enumerate(self.starts):
            hi = min(lo + self.block, self.n)
            active = np.flatnonzero(xn * self.block_max[bi] + err >= thr - 4 * err)
            if not len(active):
                break
            blocks_read += len(active)
            s = x[active] @ self.sorted[lo:hi].T  # (active, block)
            if len(ex_rows):
                where = np.full(b, -1)
                where[active] = np.arange(len(active))
                hit = (ex_pos >= lo) & (ex_pos < hi) & (where[ex_rows] >= 0)
                s[where[ex_rows[hit]], ex_pos[hit] - lo] = -np.inf
            for r in filtered:
                i = np.searchsorted(active, r)
                if i < len(active) and active[i] == r:
                    s[i, ~cast(np.ndarray, allowed[r])[self.order[lo:hi]]] = -np.inf  # r is in `filtered`: a mask
            # Only a row with a score above its k-th best so far has new k best: the others' stay as they are (past
            # the first block most rows have nothing better). Through the groups only for enough rows: they cost a
            # few numpy calls more per block (a single request's scan: 133 -> 160 µs), which pay back from ~16
            # rows on (64 rows: 19.3 -> 15.6 µs per row).
            maxima = group_maxima(s, self.group) if len(active) >= self.grouped_from else None
            better = (s if maxima is None else maxima).max(axis=1) > thr[active]
            if better.any():
                grown = active[better]
                everyone = bool(better.all())
                kth[grown] = merge_k_best(
                    kth[grown],
                    s if everyone else s[better],
                    self.group,
                    maxima if everyone or maxima is None else maxima[better],
                )
                thr[grown] = kth[grown].min(axis=1)
            rr, cc = at_or_above(s, _candidate_floor(thr[active] - 4 * err[active]), self.group, maxima)
            rows_c.append(active[rr])
            pos_c.append(self.order[cc + lo])
            score_c.append(s[rr, cc])
        self.last_blocks_read = blocks_read
        rows = np.concatenate(rows_c) if rows_c else np.zeros(0, np.int64)
        items = np.concatenate(pos_c) if pos_c else np.zeros(0, np.int64)
        approx = np.concatenate(score_c) if score_c else np.zeros(0, np.float32)
        keep = approx >= thr[rows] - 4 * err[rows]
        rows, items = rows[keep], items[keep]
        exact = canonical_pairs(x, rows, self.sorted, self.position[items])
        # Every allowed new item is a candidate (there are few), scored the same way.
        if new_states is not None and n_new:
            new_rows, new_items = self._new_candidates(b, n_new, exclude, allowed)
            rows = np.concatenate([rows, new_rows])
            items = np.concatenate([items, new_items])
            exact = np.concatenate([exact, canonical_scores(x[new_rows], new_states[new_items - self.n])])
        finite = np.isfinite(exact)
        rows, items, exact = rows[finite], items[finite], exact[finite]
        order = np.lexsort((items, -exact, rows))
        rows, items, exact = rows[order], items[order], exact[order]
        items = items.astype(np.int64, copy=False)
        bounds = np.searchsorted(rows, np.arange(b + 1))
        counts = np.minimum(k, np.diff(bounds))
        # Views of this call's own arrays, which nothing else holds.
        return [
            (items[lo : lo + n], exact[lo : lo + n])
            for lo, n in zip(bounds[:-1].tolist(), counts.tolist(), strict=True)
        ]

    def _new_candidates(self, b, n_new, exclude, allowed) -> tuple[np.ndarray, np.ndarray]:
        rows, items = [], []
        new = self.n + np.arange(n_new)
        for r in range(b):
            keep = np.ones(n_new, dtype=bool)
            if exclude[r] is not None and len(exclude[r]):
                keep &= ~np.isin(new, exclude[r])
            if allowed[r] is not None:
                keep &= allowed[r][self.n : self.n + n_new]
            rows.append(np.full(int(keep.sum()), r))
            items.append(new[keep])
        return np.concatenate(rows).astype(np.int64), np.concatenate(items).astype(np.int64)


def _pairs(arrays: Sequence[np.ndarray | None], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, position) of every position in 0..n-1 of each row's array: one concatenation for the batch, not
    numpy calls per row."""
    lengths = [0 if a is None else len(a) for a in arrays]
    present = [a for a in arrays if a is not None and len(a)]
    if not present:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    positions = np.concatenate(present).astype(np.int64, copy=False)
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    keep = (positions >= 0) & (positions < n)
    return rows[keep], positions[keep]


def group_maxima(block: np.ndarray, group: int = GROUP) -> np.ndarray | None:
    """Each row's maximum over n = width / `group` column groups, group j being columns j, j + n, j + 2n, ...
    (one elementwise pass over contiguous memory); None when `group` is 1 or does not divide the width."""
    rows, width = block.shape
    if group <= 1 or width % group:
        return None
    return block.reshape(rows, group, width // group).max(axis=1)


def _group_columns(groups: np.ndarray, group: int, n: int) -> np.ndarray:
    """The block columns of each group number in `groups` (any shape), along a new last axis."""
    return groups[..., None] + np.arange(group) * n


def merge_k_best(
    best: np.ndarray, block: np.ndarray, group: int = GROUP, maxima: np.ndarray | None = None
) -> np.ndarray:
    """Per row, the k largest values (k = best.shape[1]) of `best` and `block` together, in no particular order:
    the same multiset as partitioning their concatenation, which was the scan's largest cost.

    With `maxima` (`group_maxima(block, group)`; None: the plain partition): the k groups with the largest maxima
    hold k values at least the k-th largest maximum M, and every other value is at most M, so the k best of the
    block are among those k groups' values (a value equal to M elsewhere only ties: the multiset is the same).
    Partitioning k · `group` values per row instead of the width: ~3.5x cheaper on a 64 × 1,024 block."""
    rows, k = best.shape
    if maxima is not None and maxima.shape[1] > k:
        n = maxima.shape[1]
        top = np.argpartition(maxima, n - k, axis=1)[:, -k:]
        columns = _group_columns(top, group, n).reshape(rows, k * group)
        block = np.take_along_axis(block, columns, axis=1)
    merged = np.concatenate([best, block], axis=1)
    return np.partition(merged, merged.shape[1] - k, axis=1)[:, -k:]


def at_or_above(
    block: np.ndarray, floor: np.ndarray, group: int = GROUP, maxima: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every value with block[row, column] >= floor[row], in no particular order. With `maxima`
    only the groups whose maximum reaches the floor are read: a few per row, not the whole block."""
    if maxima is None:
        every_row, every_column = np.nonzero(block >= floor[:, None])
        return every_row, every_column
    rows, groups = np.nonzero(maxima >= floor[:, None])
    columns = _group_columns(groups, group, maxima.shape[1])
    hit = block[rows[:, None], columns] >= floor[rows][:, None]
    return np.broadcast_to(rows[:, None], columns.shape)[hit], columns[hit]


_LOWEST = np.finfo(np.float32).min


def _candidate_floor(bounds: np.ndarray) -> np.ndarray:
    """Per row, a float32 floor no higher than `bounds` and above -inf: `s >= floor` keeps every score a candidate
    bound admits and drops excluded items (-inf) in one float32 pass (a float64 bound would cast the block, and a
    second test for -inf would read it again). One float32 step down covers the rounding of the bound."""
    return np.maximum(np.nextafter(bounds.astype(np.float32), np.float32(-np.inf)), _LOWEST)
