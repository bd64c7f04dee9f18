"""Exact top-k of the content model's cosines that reads only the item rows that can still win.

The content model scores item j for a user as F_j · p, F its items' TF-IDF rows (non-negative,
sparse) and p the user's profile (non-negative, dense over the attribute tokens;
`recsys.models.content`). Two facts make most rows unnecessary:

- items with the same row score the same: the index keeps each distinct row once, with its items
  (a catalogue described by category, tags and price band has a few hundred distinct rows);
- the distinct rows are kept in blocks of similar rows (sorted by their heaviest tokens), each
  block with its per-token maximum U_b, and no row of block b scores above U_b · p. A user walks
  the blocks by decreasing bound and stops at the first whose bound cannot reach their current
  k-th score.

The scores are the dense path's own float32 values, operation for operation: a row times the
profile by scipy's CSR product, entries in their stored order (`scores`). The bound is summed in
float64 and widened by `SLACK` (far above the float32 rounding of a row's few-term sum), so a block
is skipped only if none of its rows can reach the k-th score. The answer is that of sorting every
item's score (descending, then position): `full_sort_top_k`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

BLOCK = 256
SLACK = 1e-5
HEAVIEST = 3  # tokens per row that decide its place: rows sharing them share a block
PAIR_TABLE = 1 << 16  # distinct rows x profiles `pair_scores` may compute at once beyond 4 per pair


class ContentIndex:
    """A content model's distinct item rows in blocks of similar rows, each block with its per-token maximum."""

    def __init__(self, features: sp.csr_matrix, block: int = BLOCK) -> None:
        f = sp.csr_matrix(features, dtype=np.float32)
        f.sort_indices()
        self.n = f.shape[0]
        self.features = f
        group, first = _distinct_rows(f)  # each item's distinct row, and one item per distinct row
        rows = f[first]
        order = _similar_first(rows)  # distinct rows, alike ones adjacent
        self.rows = rows[order]
        where = np.empty_like(order)
        where[order] = np.arange(len(order))
        self.group = where[group]  # item -> its distinct row's place in `rows`
        by_group = np.lexsort((np.arange(self.n), self.group))
        self.members = by_group.astype(np.int64)  # items by distinct row, then position
        self.member_ptr = np.searchsorted(self.group[by_group], np.arange(len(order) + 1))
        self.block = block
        self.starts = np.arange(0, len(order), block)
        blocks = np.repeat(np.arange(len(self.starts)), np.diff(np.append(self.starts, len(order))))
        coo = self.rows.tocoo()
        self.last_rows_read = 0  # distinct rows the latest call scored (for tests and benchmarks)
        self.upper = _max_entries(blocks[coo.row], coo.col, coo.data, (len(self.starts), f.shape[1]))

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    def scores(self, profile: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Items' scores for one profile (V,), exactly as the dense `features @ profile` computes them."""
        if not len(items):
            return np.zeros(0, np.float32)
        rows, back = np.unique(self.group[items], return_inverse=True)  # each distinct row once
        return np.asarray(self.rows[rows] @ profile[:, None], dtype=np.float32).ravel()[back]

    def pair_scores(self, profiles: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`scores` of (profile row, item) pairs in one product: each distinct item row that occurs times each profile
        that occurs (the CSR product's own order, as `scores`), unless that table would be much larger than the
        pairs (distinct rows per item: titles), where it goes profile by profile."""
        if not len(items):
            return np.zeros(0, np.float32)
        groups, g_at = np.unique(self.group[items], return_inverse=True)
        users, u_at = np.unique(rows, return_inverse=True)
        if len(groups) * len(users) > 4 * len(items) + PAIR_TABLE:
            out = np.zeros(len(items), np.float32)
            for r in users:
                mine = rows == r
                out[mine] = self.scores(profiles[r], items[mine])
            return out
        table = np.asarray(self.rows[groups] @ np.ascontiguousarray(profiles[users].T), dtype=np.float32)
        return table[g_at, u_at]

    def top_k(
        self,
        profiles: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray | None],
        allowed: Sequence[np.ndarray | None],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per profile (row): the k best item positions (score descending, then position) among the allowed, not
        excluded items, and their scores; fewer only if fewer are allowed."""
        profiles = np.asarray(profiles, np.float32)
        self.last_rows_read = 0
        bounds = np.asarray(self.upper @ profiles.astype(np.float64).T).T  # (users, blocks)
        return [self._one(profiles[r], bounds[r], k, exclude[r], allowed[r]) for r in range(len(profiles))]

    def _one(
        self, p: np.ndarray, bound: np.ndarray, k: int, exclude: np.ndarray | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        walk = np.argsort(-bound, kind="stable")
        ex = None if exclude is None or not len(exclude) else np.asarray(exclude, np.int64)
        rows_c, vals_c = [], []
        kth, at, step = -np.inf, 0, 1
        while at < len(walk) and bound[walk[at]] * (1 + SLACK) >= kth:  # else no later block can reach the k-th
            chosen = walk[at : at + step]
            at, step = at + step, step * 2  # few blocks usually suffice; when they do not, fewer rounds
            rows = np.concatenate([np.arange(b * self.block, min((b + 1) * self.block, self.n_rows)) for b in chosen])
            rows_c.append(rows)
            vals_c.append(np.asarray(self.rows[rows] @ p[:, None], dtype=np.float32).ravel())
            kth = self._kth(np.concatenate(rows_c), np.concatenate(vals_c), k, ex, allowed)[2]
        rows = np.concatenate(rows_c) if rows_c else np.zeros(0, np.int64)
        vals = np.concatenate(vals_c) if vals_c else np.zeros(0, np.float32)
        self.last_rows_read += len(rows)
        items, item_vals, _ = self._kth(rows, vals, k, ex, allowed)
        order = np.lexsort((items, -item_vals))[:k]
        return items[order], item_vals[order]

    def _kth(
        self, rows: np.ndarray, vals: np.ndarray, k: int, ex: np.ndarray | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The allowed items of the best distinct rows read so far (every row scoring at least the k-th kept item's
        score), their scores, and that k-th score (-inf while fewer than k are kept). Rows are expanded to their
        items in chunks, each holding at least twice the items still wanted: few rounds whether rows are unique
        (a catalogue with titles) or shared by thousands of items."""
        order = np.lexsort((rows, -vals))
        rows, vals = rows[order], vals[order]
        ends = np.cumsum(self.member_ptr[rows + 1] - self.member_ptr[rows])
        items_c: list[np.ndarray] = []
        vals_c: list[np.ndarray] = []
        kept, taken, kth = 0, 0, -np.inf
        want = k + (0 if ex is None else len(ex))
        while taken < len(rows) and (kept < k or vals[taken] >= kth):
            if kept < k:
                base = int(ends[taken - 1]) if taken else 0
                stop = int(np.searchsorted(ends, base + want)) + 1
            else:  # every further row tied with the k-th score (ties go by position)
                stop = int(np.searchsorted(-vals, -kth, side="right"))
            stop = min(max(stop, taken + 1), len(rows))
            members, owner = self._members(rows[taken:stop])
            keep = np.ones(len(members), dtype=bool)
            if ex is not None:
                keep &= ~np.isin(members, ex)
            if allowed is not None:
                keep &= allowed[members]
            items_c.append(members[keep])
            vals_c.append(vals[taken:stop][owner[keep]])
            kept, taken, want = kept + int(keep.sum()), stop, 2 * want
            if kept >= k:
                every = np.concatenate(vals_c)
                kth = float(np.partition(every, len(every) - k)[len(every) - k])
        items = np.concatenate(items_c) if items_c else np.zeros(0, np.int64)
        scores = np.concatenate(vals_c) if vals_c else np.zeros(0, np.float32)
        return items, scores, kth

    def _members(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items of these distinct rows, and for each item its row's place in `rows`."""
        lo, counts = self.member_ptr[rows], self.member_ptr[rows + 1] - self.member_ptr[rows]
        offsets = np.cumsum(counts) - counts
        at = np.repeat(lo - offsets, counts) + np.arange(int(counts.sum()))
        return self.members[at], np.repeat(np.arange(len(rows)), counts)


def _distinct_rows(f: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct-row number, and the first row of each distinct row (rows equal entry for entry)."""
    keys = [
        f.indices[f.indptr[r] : f.indptr[r + 1]].tobytes() + f.data[f.indptr[r] : f.indptr[r + 1]].tobytes()
        for r in range(f.shape[0])
    ]
    seen: dict[bytes, int] = {}
    group = np.fromiter((seen.setdefault(key, len(seen)) for key in keys), np.int64, len(keys))
    first = np.full(len(seen), -1, np.int64)
    first[group[::-1]] = np.arange(len(group))[::-1]
    return group, first


def _similar_first(f: sp.csr_matrix) -> np.ndarray:
    """Row positions ordered by their heaviest tokens (then position): rows alike end up in one block."""
    n = f.shape[0]
    row = np.repeat(np.arange(n), np.diff(f.indptr))
    by_weight = np.lexsort((f.indices, -f.data, row))  # each row's entries, heaviest first
    rank = np.arange(len(row)) - f.indptr[row[by_weight]]  # an entry's place within its row
    keys = np.full((HEAVIEST, n), -1, np.int64)
    top = rank < HEAVIEST
    keys[rank[top], row[by_weight][top]] = f.indices[by_weight][top]
    return np.lexsort((np.arange(n), *keys[::-1])).astype(np.int64)


def _max_entries(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix holding, for each (row, col) pair that occurs, the largest of its values."""
    key = rows.astype(np.int64) * shape[1] + cols
    order = np.lexsort((-vals, key))
    key, vals = key[order], vals[order]
    first = np.concatenate([[True], key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=bool)
    return sp.csr_matrix((vals[first].astype(np.float64), (key[first] // shape[1], key[first] % shape[1])), shape=shape)
