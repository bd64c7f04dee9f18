"""Session user-KNN: users who touched what this user touched *just now*, and what else they touched.

Batch: every training user's binary item row, scaled to unit length. Real time: nothing
to compute; at request time the user's recency profile q (latest `last` events, `decay`
per distinct tie window) is compared with every training row by cosine,

    sim(u, v) = q_u · x_v / (|q_u| |x_v|),

the `neighbours` most similar users (the user's own training row excluded) vote with
their binary rows,

    score(u, j) = Σ_v∈N(u) sim(u, v) · x_vj.

Unlike classic user-KNN on the whole history, the query moves with every click. Only
training users sharing an item with the profile are ever touched (a sparse product
through the item → users index), so a request costs the popularity of the user's
recent items, not the number of users.

Defaults: chosen on validation carved from MovieLens-100K's train part (`bench/tune.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.io.model_store import replace_file
from recsys.models.base import AnyParams, Params, Reason, Recommender
from recsys.models.capabilities import with_new_items
from recsys.models.sparse import dense, recent_weights, top_n_per_row
from recsys.models.sparse_product import product

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SessionKnnParams(Params):
    neighbours: int = Field(20, ge=1, description="Most similar training users who vote.")
    last: int = Field(20, ge=1, description="The user's latest events that make up the query profile.")
    decay: float = Field(0.8, gt=0, le=1, description="Weight of an event relative to the next newer tie window.")
    tie_ms: int = Field(1000, ge=0, description="Events within one window ts // tie_ms share an age (0: by row).")


class SessionKNN(Recommender):
    name = "session_knn"
    Params = SessionKnnParams

    def __init__(self, params: SessionKnnParams | None = None) -> None:
        super().__init__(params)
        self.params: SessionKnnParams
        self.votes = sp.csr_matrix((0, 0), dtype=np.float32)  # binary training rows (users × items)
        self.index = sp.csr_matrix((0, 0), dtype=np.float32)  # items × users: unit-length rows, transposed

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.n_items = data.n_items
        self.votes = (data.strengths > 0).astype(np.float32).tocsr()
        self.index = unit_rows(self.votes).T.tocsr()

    def neighbours(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        """(users × training users): the top cosine similarities of each user's profile, the rest zero."""
        p = self.params
        query = unit_rows(recent_weights(users, self.n_items, p.last, p.decay, tie_ms=p.tie_ms))
        sims = product(query, self.index)  # the kernel's column order, as `query @ self.index` has it
        for r, ctx in enumerate(users):
            if ctx.row is not None and ctx.row < sims.shape[1]:
                start, end = sims.indptr[r], sims.indptr[r + 1]
                sims.data[start:end][sims.indices[start:end] == ctx.row] = 0.0  # never one's own neighbour
        return top_n_per_row(sims, p.neighbours, drop_diagonal=False)

    def sparse_scores(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        """The scores as a sparse matrix with sorted rows: only the neighbours' items are stored (the rest score 0)."""
        return product(self.neighbours(users), self.votes, sort=True)

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        return with_new_items(self, users, dense(self.neighbours(users) @ self.votes), new)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The user's recent items that the neighbours who voted for `item` share most with them."""
        near = self.neighbours([user]).tocoo()
        voters = near.col[np.asarray(self.votes[near.col, item].todense()).ravel() > 0]
        if not len(voters):
            return []
        shared = np.asarray(self.votes[voters].sum(axis=0)).ravel()
        mine = np.unique(user.recent[user.recent < self.n_items])
        weight = shared[mine]
        order = np.lexsort((mine, -weight))[:n]
        return [Reason(int(mine[i]), float(weight[i])) for i in order if weight[i] > 0]

    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / "session_votes.npz", self.votes)
        return {"session_votes": "session_votes.npz"}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> SessionKNN:
        model = cls(cast(SessionKnnParams, params))
        model.votes = sp.load_npz(directory / "session_votes.npz").tocsr()
        model.index = unit_rows(model.votes).T.tocsr()
        model.n_items = data.n_items
        return model

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:

        matrix = sp.load_npz(directory / "session_votes.npz").tolil()
        matrix[rows] = 0
        cleared = matrix.tocsr()
        cleared.eliminate_zeros()
        replace_file(directory, "session_votes.npz", lambda f: sp.save_npz(f, cleared))


def unit_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Each row over its length (floored at 1e-12), float32: `diags(1 / max(‖row‖, 1e-12)) @ matrix`."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if not out.has_canonical_format:
        norms = np.sqrt(np.asarray(out.multiply(out).sum(axis=1)).ravel())
        return (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ out).astype(np.float32).tocsr()
    # The same numbers without scipy's layers (a query's row costs ~3x less): on canonical rows `multiply` stores
    # the nonzero squares in column order and `sum(axis=1)` is `np.add.reduceat` over each nonempty row of them;
    # the scaling is the same kernel's product by the diagonal, so each value and each row's order are scipy's.
    rows, row = out.shape[0], np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    squares = out.data * out.data
    kept = squares != 0
    squares, counts = squares[kept], np.bincount(row[kept], minlength=rows)
    sums = np.zeros(rows, np.float32)
    if len(squares):
        filled = np.flatnonzero(counts)
        sums[filled] = np.add.reduceat(squares, (np.cumsum(counts) - counts)[filled])
    scale = 1.0 / np.maximum(np.sqrt(sums), 1e-12)
    diagonal = sp.csr_matrix((scale, np.arange(rows), np.arange(rows + 1)), shape=(rows, rows))
    return product(diagonal, out)
