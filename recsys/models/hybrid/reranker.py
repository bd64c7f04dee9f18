"""The hybrid's stage 2: popularity priors and a logistic re-ranker over the blend's top candidates.

The blend's top `rerank_candidates` unseen items are re-ordered by a logistic regression on
per-(user, candidate) features: each component's normalised score, log popularity shares
(plain, late, by position, recent: `Priors`), log stage-1 rank, each component score ×
log(history length), and log(history length). The candidates keep the set of stage-1
score values; only their order changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from recsys.data.inputs import Dataset, UserContext
from recsys.models.hybrid.blend import ndcg
from recsys.topk import select_top, top_k_of_scores

HOUR_MS = 3_600_000


class Priors:
    """Popularity priors the re-ranker reads as log shares: plain, late, by position, recent (see the module doc)."""

    def __init__(
        self,
        pop: np.ndarray,
        late: np.ndarray,
        position: sp.csr_matrix,
        hours: sp.csc_matrix,
        window: int = 30,
        days: float = 60.0,
        first_hour: int = 0,
    ) -> None:
        self.first_hour = first_hour
        self.pop, self.late = pop.astype(np.float64), late.astype(np.float64)
        self.position = _Counts(position)  # (positions × items) event counts
        self.hours = _Counts(hours)  # (hours × items) event counts
        self.window, self.days = window, days
        self._pop_share = self.pop / max(self.pop.sum(), 1e-12)
        self._late_share = self.late / max(self.late.sum(), 1e-12)

    @staticmethod
    def fit(data: Dataset, window: int = 30, days: float = 60.0) -> Priors:
        ev = data.events
        n_items = data.n_items
        ptr = ev.indptr(data.n_users)
        counts = np.diff(ptr)
        position = np.arange(len(ev)) - np.repeat(ptr[:-1], counts)
        relative = position / np.maximum(np.repeat(counts, counts) - 1, 1)
        late = np.bincount(ev.item, relative, minlength=n_items)
        n_pos = int(counts.max(initial=0)) + 1
        pos = sp.csr_matrix((np.ones(len(ev)), (position, ev.item)), shape=(n_pos, n_items))
        pos.sum_duplicates()
        hour = (ev.ts_ms // HOUR_MS).astype(np.int64)
        first = int(hour.min(initial=0))
        n_hours = int(hour.max(initial=0)) - first + 1 if len(ev) else 1
        hours = sp.csc_matrix((np.ones(len(ev)), (hour - first, ev.item)), shape=(n_hours, n_items))
        hours.sum_duplicates()
        return Priors(data.popularity(), late, pos, hours, window, days, first)

    def shares(self, users: Sequence[UserContext], cand: np.ndarray) -> np.ndarray:
        """(users × candidates × 4) log shares of the candidates under each prior."""
        out = np.zeros((*cand.shape, 4))
        out[..., 0] = self._pop_share[cand]
        out[..., 1] = self._late_share[cand]
        n = np.array([len(ctx.items) for ctx in users], np.int64)
        out[..., 2] = self.position.shares(cand, n - self.window, n + self.window)
        timed = np.array([len(ctx.recent_ts_ms) > 0 for ctx in users], dtype=bool)
        if timed.any():
            hours = round(self.days * 24)
            end = np.array([int(ctx.recent_ts_ms[-1]) // HOUR_MS for ctx, t in zip(users, timed, strict=True) if t])
            end -= self.first_hour
            out[timed, :, 3] = self.hours.shares(cand[timed], end - hours + 1, end + 1)  # hours (end − window, end]
        return np.log(out + 1e-5)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            pop=self.pop,
            late=self.late,
            window=self.window,
            days=self.days,
            first_hour=self.first_hour,
            **_sparse_arrays("position", self.position.matrix.tocsr()),
            **_sparse_arrays("hours", self.hours.matrix),
        )

    @staticmethod
    def load(path: Path) -> Priors:
        f = np.load(path)
        position = sp.csr_matrix(
            (f["position_data"], f["position_indices"], f["position_indptr"]), shape=tuple(f["position_shape"])
        )
        hours = sp.csc_matrix((f["hours_data"], f["hours_indices"], f["hours_indptr"]), shape=tuple(f["hours_shape"]))
        return Priors(f["pop"], f["late"], position, hours, int(f["window"]), float(f["days"]), int(f["first_hour"]))


class _Counts:
    """Event counts (rows: positions or hours, columns: items), read as one item's count over a row range in
    O(log): per item, its rows sorted with a running sum (CSC), and a running sum of the row totals."""

    def __init__(self, matrix: sp.spmatrix) -> None:
        self.matrix = sp.csc_matrix(matrix, dtype=np.float64)
        self.matrix.sort_indices()
        self._rows = np.concatenate([[0.0], np.cumsum(np.asarray(self.matrix.sum(axis=1)).ravel())])
        self._data = np.concatenate([[0.0], np.cumsum(self.matrix.data)])
        # Every stored entry's (column, row) as one sorted int64 key, column-major: one searchsorted over it finds,
        # for many columns at once, the same positions as a search inside each column's own slice.
        n_rows = max(self.matrix.shape[0], 1)
        columns = np.repeat(np.arange(self.matrix.shape[1], dtype=np.int64), np.diff(self.matrix.indptr))
        self._keys = columns * (n_rows + 1) + self.matrix.indices.astype(np.int64)
        self._stride = n_rows + 1

    def shares(self, items: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per row of `items` (rows × candidates), each item's count in rows [lo[r], hi[r]) of the counts over all
        counts in those rows (0 where there are none): one search over the batch, not one per user."""
        n_rows = self.matrix.shape[0]
        lo, hi = np.clip(lo, 0, n_rows), np.clip(hi, 0, n_rows)
        total = self._rows[hi] - self._rows[lo]
        base = np.asarray(items, dtype=np.int64) * self._stride
        a, b = np.searchsorted(self._keys, base + lo[:, None]), np.searchsorted(self._keys, base + hi[:, None])
        counted = total > 0
        out = np.zeros(base.shape)
        out[counted] = (self._data[b[counted]] - self._data[a[counted]]) / total[counted, None]
        return out


# Values typed Any: numpy's `savez` stub matches `**dict[str, ndarray]` against its `allow_pickle: bool` keyword.
def _sparse_arrays(prefix: str, m: sp.spmatrix) -> dict[str, Any]:
    return {
        f"{prefix}_data": m.data,
        f"{prefix}_indices": m.indices,
        f"{prefix}_indptr": m.indptr,
        f"{prefix}_shape": np.array(m.shape),
    }


def candidate_features(
    norm: dict[str, np.ndarray],
    priors: Priors,
    users: Sequence[UserContext],
    stage1: np.ndarray,
    seen: np.ndarray,
    n_candidates: int,
    components: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """(candidates users × C, features users × C × F) for the stage-1 top-C unseen items (see the module doc)."""
    s = np.where(seen, -np.inf, stage1)
    if s.shape[0] <= 8:  # serving's few users: a sampled bound partitions only the scores above it (same answer)
        cand = np.stack([top_k_of_scores(row, n_candidates)[0] for row in s]) if len(s) else np.zeros((0, 0), int)
    else:
        cand, _ = select_top(s, n_candidates)
    cand = np.where(cand < 0, 0, cand)  # padding (tiny catalogues): any position, its features are what they are
    comp = np.stack(
        [np.take_along_axis(norm[c], cand, 1) if c in norm else np.zeros(cand.shape) for c in components], axis=-1
    )
    return cand, features(comp, priors, users, cand)


def features(comp: np.ndarray, priors: Priors, users: Sequence[UserContext], cand: np.ndarray) -> np.ndarray:
    """(users × C × F) re-ranker features of candidates, given their normalised component scores (users × C × comps):
    the dense path and the two-stage serving path (`candidates.py`) both end here."""
    rank = np.log1p(np.broadcast_to(np.arange(cand.shape[1], dtype=np.float64), cand.shape))[..., None]
    loglen = np.log1p(np.array([len(u.items) for u in users], np.float64))[:, None, None] * np.ones((*cand.shape, 1))
    return np.concatenate([comp, priors.shares(users, cand), rank, comp * loglen, loglen], axis=-1)


class Reranker:
    """L2-regularised logistic regression on the candidates' standardised features (intercept unpenalised)."""

    def __init__(
        self, coef: np.ndarray, mean: np.ndarray, std: np.ndarray, l2: float, n_candidates: int, components: list[str]
    ) -> None:
        self.coef, self.mean, self.std = np.asarray(coef), np.asarray(mean), np.asarray(std)
        self.l2, self.n_candidates, self.components = l2, n_candidates, components

    @staticmethod
    def fit(feats: np.ndarray, labels: np.ndarray, l2: float, components: list[str]) -> Reranker:
        flat = feats.reshape(-1, feats.shape[-1])
        mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-9
        coef = fit_logistic((flat - mean) / std, labels.reshape(-1), l2)
        return Reranker(coef, mean, std, l2, feats.shape[1], components)

    def rerank(self, cand: np.ndarray, feats: np.ndarray, stage1: np.ndarray) -> np.ndarray:
        """The candidates' stage-1 score values re-assigned in the re-ranker's order (they stay above the rest)."""
        order = self.order(feats)
        out = stage1.copy()
        values = np.sort(np.take_along_axis(stage1, cand, 1), axis=1)[:, ::-1]
        np.put_along_axis(out, np.take_along_axis(cand, order, 1), values, 1)
        return out

    def order(self, feats: np.ndarray) -> np.ndarray:
        z = ((feats - self.mean) / self.std) @ self.coef[:-1]
        return np.argsort(-z, axis=1, kind="stable")

    def to_json(self) -> dict:
        return {
            "coef": self.coef.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "l2": self.l2,
            "n_candidates": self.n_candidates,
            "components": self.components,
        }

    @staticmethod
    def from_json(d: dict) -> Reranker:
        return Reranker(
            np.array(d["coef"]),
            np.array(d["mean"]),
            np.array(d["std"]),
            d["l2"],
            d["n_candidates"],
            list(d["components"]),
        )


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """argmin Σ log(1 + e^z) − y z + l2 ‖w‖², z = x w + b, by L-BFGS; returns [w..., b]."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ w
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = xb.T @ (p - y)
        grad[:-1] += 2.0 * l2 * w[:-1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + l2 * (w[:-1] @ w[:-1])), grad

    return minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 1000}).x


def choose_reranker(
    feats: np.ndarray,
    labels: np.ndarray,
    relevant: sp.csr_matrix,
    cand: np.ndarray,
    l2_grid: Sequence[float],
    seed: int,
    always: bool = False,
    components: list[str] | None = None,
) -> tuple[Reranker | None, dict]:
    """The re-ranker with the best cross-validated L2, refitted on every user, if it beats the blend's own order in
    that cross-validation (or `always`); None otherwise. Also returns the cross-validation figures."""
    cv = cross_validate(feats, labels, relevant, cand, l2_grid, seed)
    l2 = max(cv["reranked"], key=lambda k: cv["reranked"][k])
    cv["kept"] = bool(always or cv["reranked"][l2] > cv["blend"])
    cv["l2"] = float(l2)
    if not cv["kept"]:
        return None, cv
    return Reranker.fit(feats, labels, float(l2), list(components or [])), cv


def cross_validate(
    feats: np.ndarray,
    labels: np.ndarray,
    relevant: sp.csr_matrix,
    cand: np.ndarray,
    l2_grid: Sequence[float],
    seed: int,
    repeats: int = 3,
) -> dict:
    """Mean validation NDCG@10 of the re-ranked candidates per L2 (2-fold over users, `repeats` partitions), and of
    the blend's own order, on the same users; plus the paired SE of the best L2's gain."""
    n = feats.shape[0]
    base = ndcg(cand[:, :10], relevant)
    out: dict = {"blend": float(base.mean()), "reranked": {}, "paired_se": {}}
    for l2 in l2_grid:
        total = np.zeros(n)
        for rep in range(repeats):
            fold = np.random.default_rng(seed + rep).integers(0, 2, n)
            for f in (0, 1):
                train, test = fold != f, fold == f
                if not train.any() or not test.any():
                    continue
                model = Reranker.fit(feats[train], labels[train], l2, [])
                order = model.order(feats[test])
                total[test] += ndcg(np.take_along_axis(cand[test], order, 1)[:, :10], relevant[np.flatnonzero(test)])
        total /= repeats
        out["reranked"][str(l2)] = float(total.mean())
        out["paired_se"][str(l2)] = float(np.std(total - base, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return out
