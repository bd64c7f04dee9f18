"""EASE (Steck 2019): item–item regression weights on the binary matrix, scored from the latest events.

Batch: with X the binary (users × items) matrix and G = XᵀX + λI, the closed form of
min ‖X − XB‖² + λ‖B‖² subject to diag(B) = 0 is, with P = G⁻¹,

    B_ij = −P_ij / P_jj   (i ≠ j),   B_ii = 0.

Unlike a cosine, a regression weight explains away an item that is only similar through a
third one. Real time: nothing to compute; at request time the user's recency profile
(latest `last` events, `decay` per distinct tie window) picks the rows,

    score(u, j) = Σ_t decay^(age_t) · B(i_t, j),

so one click moves the list. λ is large because the query is a short recent profile, not a
whole history.

Scale guard: G is dense and inverted in O(n³), so only the `max_items` most popular items
(10,000 by default: a 400 MB float32 inverse, made in G's own memory) get weights; the rest have none and score
0 (the hybrid's other components rank them). Each row of B is then pruned to its
`neighbours` largest weights by magnitude and kept sparse, so the artifact and a request
never touch a dense n×n matrix (on MovieLens-100K's validation, 500 of 1,612 lose nothing:
`bench/tune.py`).

Defaults: chosen on validation carved from MovieLens-100K's train part (`bench/tune.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset
from recsys.models.base import Params
from recsys.models.item_to_item import ItemToItem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PRUNE_CHUNK = 1024  # rows of B formed densely at a time while pruning
# The dense solves run in float32: half the memory and 2-3x less CPU than float64 for the O(n³)
# factorisation; G + λI is well conditioned (λ is large), so the weights keep ~5 digits: every
# top-10 list on MovieLens-100K is float64's, ≥ 99% of rows keep the same neighbours (docs/batch_scale.md).
SOLVE_DTYPE = np.float32


class EaseParams(Params):
    lam: float = Field(1000.0, gt=0, description="L2 penalty λ added to the Gram matrix's diagonal.")
    last: int = Field(15, ge=1, description="The user's latest events that make up the query profile.")
    decay: float = Field(0.8, gt=0, le=1, description="Weight of an event relative to the next newer tie window.")
    tie_ms: int = Field(1000, ge=0, description="Events within one window ts // tie_ms share an age (0: by row).")
    max_items: int = Field(10_000, ge=2, description="Only the most popular items get weights (the O(n³) guard).")
    neighbours: int = Field(500, ge=1, description="Largest weights (by magnitude) kept per row of B.")


class EASE(ItemToItem):
    name = "ease"
    Params = EaseParams
    matrix_file = "ease_weights.npz"  # B: n_items × n_items, pruned rows

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        p = cast(EaseParams, self.params)
        self.n_items = data.n_items
        kept = most_popular(data.popularity(), p.max_items)
        x = (data.strengths[:, kept] > 0).astype(SOLVE_DTYPE).tocsc()
        precision = ridge_inverse((x.T @ x).toarray(), p.lam)  # counts: exact in float32 below 2²⁴
        diag = np.diag(precision).copy()

        def rows(lo: int, hi: int) -> np.ndarray:
            block = -precision[lo:hi] / diag[None, :]
            block[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
            return block

        self.matrix = expand(pruned_rows(rows, len(kept), p.neighbours), kept, data.n_items)


# --- shared with SLIT ------------------------------------------------------------------------
def most_popular(popularity: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n most popular items with any interaction, in position order (ties: lower position)."""
    touched = np.flatnonzero(popularity > 0)
    if touched.size > n:
        order = np.lexsort((touched, -popularity[touched]))[:n]
        touched = np.sort(touched[order])
    return touched


def ridge_inverse(gram: np.ndarray, lam: float) -> np.ndarray:
    """(G + λI)⁻¹ of a symmetric positive semi-definite C-ordered G, by Cholesky, in G's own memory and dtype."""
    gram[np.diag_indices_from(gram)] += lam
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (gram,))
    # LAPACK reads Fortran order: G's transpose view is G itself (symmetric) and is Fortran-contiguous, so
    # both calls overwrite G instead of copying it; they fill its upper triangle (the view's lower).
    factor, info = potrf(gram.T, lower=True, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"potrf failed ({info})")
    inverse, info = potri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri failed ({info})")
    out = inverse.T
    mirror_upper(out)
    return out


def mirror_upper(a: np.ndarray) -> None:
    """Copy a square matrix's upper triangle onto its lower one, a band of columns at a time (no n² index arrays)."""
    n = len(a)
    for lo in range(0, n, PRUNE_CHUNK):
        hi = min(n, lo + PRUNE_CHUNK)
        a[hi:, lo:hi] = a[lo:hi, hi:].T
        square = a[lo:hi, lo:hi]
        below = np.tril_indices(hi - lo, -1)
        square[below] = square.T[below]


def pruned_rows(rows, n: int, keep: int) -> sp.csr_matrix:
    """An n×n matrix formed `PRUNE_CHUNK` dense rows at a time by `rows(lo, hi)`, each row cut to its `keep`
    largest entries by magnitude (float32 CSR): the dense matrix never exists whole twice. Negative weights are
    kept: a regression's "not after this one" matters (SLIT on validation: 0.260 with them, 0.249 without)."""
    data, indices, indptr = [], [], [np.zeros(1, np.int64)]
    for lo in range(0, n, PRUNE_CHUNK):
        hi = min(n, lo + PRUNE_CHUNK)
        block = rows(lo, hi)
        k = min(keep, n)
        top = np.argpartition(-np.abs(block), k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (hi - lo, 1))
        top.sort(axis=1)
        val = np.take_along_axis(block, top, axis=1)
        nonzero = val != 0
        data.append(val[nonzero].astype(np.float32))
        indices.append(top[nonzero].astype(np.int32))
        indptr.append(indptr[-1][-1] + np.cumsum(nonzero.sum(axis=1)))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=(n, n))


def expand(weights: sp.csr_matrix, kept: np.ndarray, n_items: int) -> sp.csr_matrix:
    """A kept-items × kept-items matrix on all item positions (items outside `kept` get empty rows and columns)."""
    coo = weights.tocoo()
    out = sp.csr_matrix((coo.data, (kept[coo.row], kept[coo.col])), shape=(n_items, n_items), dtype=np.float32)
    out.sort_indices()
    return out
