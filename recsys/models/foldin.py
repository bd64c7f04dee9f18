"""Fold-in: a user's (or item's) factor vector from their interactions, the other side's factors held fixed.

The one implementation of the math the batch engines minimise (DESIGN.md, "The math"),
shared by the speed layer and the tests. For user u with strengths r_ui over items I(u):

    c_ui = 1 + alpha * r_ui      (objective.confidence == "one_plus_alpha_r", Spark MLlib)
         = alpha * r_ui          (objective.confidence == "alpha_r", the `implicit` library)
    lambda_u = reg * |I(u)|      (objective.reg_scaling == "count", Spark's ALS-WR)
             = reg               (objective.reg_scaling == "none")

    x_u = (YᵀY + Σ_i (c_ui − 1) y_i y_iᵀ + lambda_u I)⁻¹ · Σ_i c_ui y_i

Items fold in the same way with the roles swapped (XᵀX instead of YᵀY). The Gram
matrix is computed once per model, when a `FoldIn` is built, not once per event,
and many users are solved in one batched call.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.contracts.manifest import Objective

SOLVE_CHUNK = 1024


def confidence(objective: Objective, strengths: np.ndarray) -> np.ndarray:
    scaled = objective.alpha * np.asarray(strengths, dtype=np.float64)
    return 1.0 + scaled if objective.confidence == "one_plus_alpha_r" else scaled


def regulariser(objective: Objective, n_interactions: int) -> float:
    return objective.reg * (n_interactions if objective.reg_scaling == "count" else 1)


def explain(
    gram: np.ndarray, objective: Objective, history: np.ndarray, strengths: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """How much each history item adds to the folded-in user's score of `target` (Hu et al. 2008, sec. 5).

    With W = (YᵀY + Σ_j (c_uj − 1) y_j y_jᵀ + lambda_u I)⁻¹ the fold-in is x_u = W Σ_j c_uj y_j, so
    the score y_tᵀ x_u = Σ_j c_uj · y_tᵀ W y_j: item j's share is c_uj · y_tᵀ W y_j, and the
    shares sum to the score exactly. `history` is (n, rank): the vectors of the user's items.
    """
    y = np.asarray(history, dtype=np.float64)
    c = confidence(objective, strengths)
    lhs = np.array(gram, dtype=np.float64) + (y.T * (c - 1.0)) @ y
    lhs.flat[:: lhs.shape[0] + 1] += regulariser(objective, len(c))
    weighted = np.linalg.solve(lhs, np.asarray(target, dtype=np.float64))  # W y_t (W is symmetric)
    return c * (y @ weighted)


class FoldIn:
    """Solves for vectors against fixed `factors` (the other side) under one objective."""

    def __init__(self, factors: np.ndarray, objective: Objective) -> None:
        # float64 for the solves: the normal equations square the condition number.
        self._factors = np.array(factors, dtype=np.float64)
        self.n = len(self._factors)
        self.objective = objective
        self.gram = self.factors.T @ self.factors
        self.rank = self._factors.shape[1]

    @property
    def factors(self) -> np.ndarray:
        return self._factors[: self.n]

    def set_vectors(self, indices: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace fixed-side vectors (new items folded in by the speed layer), growing as needed.

        The Gram matrix keeps the model's: vectors added between two batch models
        enter the interaction terms of the users who touched them, not YᵀY.
        """
        needed = int(np.max(indices)) + 1 if len(indices) else 0
        if needed > len(self._factors):
            grown = np.zeros((max(needed, 2 * len(self._factors)), self.rank))
            grown[: self.n] = self._factors[: self.n]
            self._factors = grown
        self._factors[indices] = vectors
        self.n = max(self.n, needed)

    def confidence(self, strengths: np.ndarray) -> np.ndarray:
        return confidence(self.objective, strengths)

    def regulariser(self, n_interactions: int) -> float:
        return regulariser(self.objective, n_interactions)

    def vector(self, indices: np.ndarray, strengths: np.ndarray) -> np.ndarray:
        """The vector of one user (or item) who interacted with `indices` with `strengths` (r > 0)."""
        return self.vectors(sp.csr_matrix((strengths, indices, [0, len(indices)]), shape=(1, self.n)))[0]

    def vectors(self, rows: sp.csr_matrix) -> np.ndarray:
        """Vectors for every row of a (rows x n) strength matrix, solved in one batch.

        Rows without a positive strength get a zero vector (nothing is known about them).
        """
        rows = sp.csr_matrix(rows)
        if rows.shape[0] > SOLVE_CHUNK:  # bounds the (rows x rank x rank) systems held at once
            return np.vstack([self.vectors(rows[i : i + SOLVE_CHUNK]) for i in range(0, rows.shape[0], SOLVE_CHUNK)])
        n = rows.shape[0]
        lhs = np.broadcast_to(self.gram, (n, self.rank, self.rank)).copy()
        rhs = np.zeros((n, self.rank))
        empty = np.zeros(n, dtype=bool)
        for r in range(n):
            start, end = rows.indptr[r], rows.indptr[r + 1]
            positive = rows.data[start:end] > 0
            idx, strengths = rows.indices[start:end][positive], rows.data[start:end][positive]
            if idx.size == 0:
                empty[r] = True
                continue
            y = self.factors[idx]
            c = self.confidence(strengths)
            lhs[r] += (y.T * (c - 1.0)) @ y
            lhs[r].flat[:: self.rank + 1] += self.regulariser(idx.size)
            rhs[r] = c @ y
        lhs[empty] = np.eye(self.rank)  # keeps the batched solve well-posed; the answer is zeroed below
        out = np.linalg.solve(lhs, rhs[..., None])[..., 0]
        out[empty] = 0.0
        return out.astype(np.float32)
