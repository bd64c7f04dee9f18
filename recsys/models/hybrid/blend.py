"""The hybrid's stage 1: each component's scores on one scale per user, and their weighted sum.

A component's scores are divided by the user's largest score over the items they have not
touched (1 when nothing positive), so a user's own items never set the scale, and blended

    s1(u, j) = Σ_c w_c · s_c(u, j) / max_{j' unseen} s_c(u, j')  +  1e-6 · pop_j / max pop.

One definition, used by the fit (tuning), the dense scores (evaluation, explanations) and
the two-stage serving path (`candidates.py`), which applies the same functions to the
candidates only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recsys.data.inputs import UserContext
from recsys.evaluation.metrics import per_user_metrics
from recsys.topk import PAD, select_top


def finite(scores: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(scores), scores, 0.0).astype(np.float32)


def seen_rows(users: Sequence[UserContext], n_items: int) -> np.ndarray:
    """(users × items) bool: the items each user has touched (never recommended, never the scale)."""
    out = np.zeros((len(users), n_items), dtype=bool)
    for r, ctx in enumerate(users):
        items = ctx.items[(ctx.items < n_items) & (ctx.items >= 0)]
        out[r, items] = True
    return out


def row_scale(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Each row's largest finite score over unseen items, 1 where nothing is positive."""
    if not scores.shape[1]:
        return np.ones(scores.shape[0], np.float32)
    top = np.max(np.where(seen | ~np.isfinite(scores), -np.inf, scores), axis=1)
    return np.where(top > 0, top, 1.0).astype(np.float32)


def unseen_max(scores: np.ndarray, seen_items: Sequence[np.ndarray]) -> np.ndarray:
    """`_row_scale` of finite scores, given each row's seen positions: one pass over the row (serving's path)."""
    out = np.ones(len(scores), np.float32)
    for r, idx in enumerate(seen_items):
        if not scores.shape[1]:
            break
        row = scores[r]
        saved = row[idx].copy()
        row[idx] = -np.inf
        top = row.max()
        row[idx] = saved
        out[r] = top if top > 0 else 1.0
    return out


def normalised(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Scores divided by each row's largest score over unseen items (zeros stay zero: no evidence stays 0)."""
    return finite(scores) / row_scale(scores, seen)[:, None]


def blend(norm: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of normalised component scores (zero weights skipped)."""
    out = None
    term = None  # one buffer for w * scores: a fresh product per component is a fresh block of pages each time
    for name, w in weights.items():
        if w > 0 and name in norm:
            scores = norm[name]
            if out is None:
                out = w * scores
            elif scores.dtype == out.dtype == np.float32 and scores.shape == out.shape:
                term = np.empty_like(out) if term is None else term
                out += np.multiply(scores, w, out=term)  # what `w * scores` gives, in float32
            else:
                out += w * scores
    if out is None:
        shape = next(iter(norm.values())).shape if norm else (0, 0)
        return np.zeros(shape, np.float32)
    return out.astype(np.float32, copy=False)


def data_pop_term(popularity: np.ndarray) -> np.ndarray:
    """1e-6 · pop / max pop: breaks ties and ranks for a user nothing else scores (a list is never by position)."""
    pop = np.asarray(popularity, dtype=np.float32)
    return (1e-6 * pop / max(float(pop.max(initial=0.0)), 1.0)).astype(np.float32)


# Each component's list of candidates for the tuning search, and the float32 rounding allowance of its bound.
TUNE_DEPTH = 100
BOUND_SLACK = 1e-4


class BlendTop:
    """The top k of `blend(norm, weights)` with the seen items left out, for many weights over the same scores.

    Exactly `select_top` of the dense blend (the same items in the same order), read from the union of each
    component's `depth` best unseen items instead of every item: an item outside every list scores at most
    B = Σ_c w_c · t_c (t_c the user's `depth`-th score of c, weights ≥ 0), so where the k-th best candidate beats
    B (with `BOUND_SLACK` for float32 rounding) no other item can enter; the other users are ranked densely.
    The candidates' blend is the dense blend's own values (the same float32 operations per entry), and a
    user's candidates are in item order, so ties fall to the lower position as in the dense sort.
    """

    def __init__(self, norm: dict[str, np.ndarray], seen: np.ndarray, k: int, depth: int = TUNE_DEPTH) -> None:
        self.norm, self.seen, self.k = norm, seen, k
        n_users, n_items = seen.shape
        self.depth = min(depth, n_items)
        lists, self.kth = [], {}
        for name, scores in norm.items():
            masked = np.where(seen, -np.inf, scores)
            top = np.argpartition(-masked, self.depth - 1, axis=1)[:, : self.depth]
            lists.append(top)
            self.kth[name] = np.take_along_axis(masked, top, 1).min(axis=1).astype(np.float64)
        # -inf: fewer unseen items than `depth`, all of them listed (no bound needed from this component)
        self.finite_kth = {n: np.where(np.isfinite(v), v, 0.0) for n, v in self.kth.items()}
        union = np.sort(np.concatenate(lists, axis=1), axis=1) if lists else np.zeros((n_users, 0), np.int64)
        fresh = np.ones(union.shape, bool)
        fresh[:, 1:] = union[:, 1:] != union[:, :-1]
        width = int(fresh.sum(axis=1).max(initial=0))
        # Each user's distinct candidates, in item order, padded with the user's first one (masked below).
        self.columns = np.repeat(union[:, :1], width, axis=1) if width else np.zeros((n_users, 0), np.int64)
        rows, where = np.nonzero(fresh)
        self.columns[rows, np.cumsum(fresh, axis=1)[rows, where] - 1] = union[rows, where]
        self.padding = np.arange(width)[None, :] >= fresh.sum(axis=1)[:, None]
        self.padding |= np.take_along_axis(seen, self.columns, 1)
        self.gathered = {n: np.take_along_axis(s, self.columns, 1) for n, s in norm.items()}
        self.densely_ranked = 0  # users the last call had to rank over every item (for tests and benchmarks)

    def top(self, weights: dict[str, float]) -> np.ndarray:
        """(users, k) item positions, best first, -1 padded: `select_top` of the dense blend, seen left out."""
        if any(w < 0 for w in weights.values()):
            return self._dense(weights, np.arange(self.seen.shape[0]))
        scores = blend(self.gathered, weights)
        scores[self.padding] = -np.inf
        cols, vals = select_top(scores, self.k)
        bound = sum((w * self.kth[n] for n, w in weights.items() if w > 0 and n in self.kth), np.zeros(len(cols)))
        slack = BOUND_SLACK * (
            1.0 + sum((w * np.abs(self.finite_kth[n]) for n, w in weights.items() if w > 0 and n in self.kth), 0.0)
        )
        out = np.where(cols == PAD, PAD, np.take_along_axis(self.columns, np.maximum(cols, 0), 1))
        exact = vals[:, -1].astype(np.float64) > bound + slack
        if self.depth == self.seen.shape[1]:
            exact[:] = True  # every item is a candidate
        doubtful = np.flatnonzero(~exact)
        self.densely_ranked = len(doubtful)
        if len(doubtful):
            out[doubtful] = self._dense(weights, doubtful)
        return out

    def _dense(self, weights: dict[str, float], rows: np.ndarray) -> np.ndarray:
        scores = blend({n: s[rows] for n, s in self.norm.items()}, weights)
        scores[self.seen[rows]] = -np.inf
        return select_top(scores, self.k)[0]


def coordinate_ascent(
    objective, start: dict[str, float], fixed: str, grid: Sequence[float], rounds: int
) -> tuple[dict[str, float], float]:
    """One weight at a time over `grid`, the others held, `fixed` never moved; stops when a round improves nothing.

    `objective(weights)` scores the blend with those weights (higher is better)."""
    weights = dict(start)
    best = objective(weights)
    for _ in range(rounds):
        improved = False
        for name in weights:
            if name == fixed:
                continue
            for value in grid:
                if value == weights[name]:
                    continue
                trial = {**weights, name: value}
                if not any(v > 0 for v in trial.values()):
                    continue
                score = objective(trial)
                if score > best + 1e-6:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights, best


def ndcg(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Per-row NDCG of ranked item positions (-1 = padding) against a relevant-items matrix (rows aligned)."""
    return per_user_metrics(top, relevant)["ndcg"]
