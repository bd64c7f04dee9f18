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
    for name, w in weights.items():
        if w > 0 and name in norm:
            if out is None:
                out = w * norm[name]
            else:
                out += w * norm[name]
    if out is None:
        shape = next(iter(norm.values())).shape if norm else (0, 0)
        return np.zeros(shape, np.float32)
    return out.astype(np.float32)


def data_pop_term(popularity: np.ndarray) -> np.ndarray:
    """1e-6 · pop / max pop: breaks ties and ranks for a user nothing else scores (a list is never by position)."""
    pop = np.asarray(popularity, dtype=np.float32)
    return (1e-6 * pop / max(float(pop.max(initial=0.0)), 1.0)).astype(np.float32)


def coordinate_ascent(
    norm: dict[str, np.ndarray], objective, start: dict[str, float], fixed: str, grid: Sequence[float], rounds: int
) -> tuple[dict[str, float], float]:
    """One weight at a time over `grid`, the others held, `fixed` never moved; stops when a round improves nothing."""
    weights = dict(start)
    best = objective(blend(norm, weights))
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
                score = objective(blend(norm, trial))
                if score > best + 1e-6:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights, best


def ndcg(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Per-row NDCG of ranked item positions (-1 = padding) against a relevant-items matrix (rows aligned)."""
    return per_user_metrics(top, relevant)["ndcg"]
