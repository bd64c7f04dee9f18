"""The item-to-item family: one item × item matrix, queried with the user's recency profile.

Item-KNN (cosine), EASE, SLIT and transitions differ only in how they fit the matrix M;
at request time they all read the user's latest `last` events, each weighing
decay^(age in tie windows) (and, where the model has them, a weight per event type),

    score(u, j) = Σ_t w_t · M(i_t, j),

so one click moves the list and nothing is computed per user in the speed layer. A
subclass overrides `fit` (it sets `matrix`, and `kinds` if it weighs event types); the
query, the scores, similar items, explanations and the files are here. `sparse_scores`
is the same product kept sparse: an item outside every latest item's row scores exactly
0, which is what lets the hybrid's two-stage serving read only those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.models.base import AnyParams, Reason, Recommender
from recsys.models.capabilities import with_new_items
from recsys.models.sparse import dense, recent_weights
from recsys.models.sparse_product import product

KINDS_FILE = "kind_weights.npy"


class ItemToItem(Recommender):
    """Base of the item × item models. Subclasses set `name`, `Params` (with `last`, `decay`, `tie_ms`),
    `matrix_file`, and implement `fit`."""

    matrix_file: ClassVar[str]
    # Whether the query weighs event types (`kinds`, saved beside the matrix).
    weighs_kinds: ClassVar[bool] = False

    def __init__(self, params: AnyParams | None = None) -> None:
        super().__init__(params)
        self.matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self.kinds: np.ndarray | None = None  # weight per event-type position, if the model weighs them

    # --- the query -------------------------------------------------------------------------------
    def profile(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        """(users × items): each user's latest events, recency- (and type-) weighted."""
        p = self.params
        return recent_weights(users, self.n_items, p.last, p.decay, self.kinds, p.tie_ms)  # type: ignore[attr-defined]

    def sparse_scores(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        """The scores as a sparse (users × items) matrix with sorted rows; items not stored score exactly 0."""
        return product(self.profile(users), self.matrix, sort=True)

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        return with_new_items(self, users, dense(self.profile(users) @ self.matrix), new)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return row_top(self.matrix, item, k)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The latest events with the largest terms w_t · M(i_t, item)."""
        return largest(self.profile([user]).multiply(self.matrix[:, item].T).tocsr(), n)

    # --- files -------------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / self.matrix_file, self.matrix)
        files = {Path(self.matrix_file).stem: self.matrix_file}
        if self.weighs_kinds:
            np.save(directory / KINDS_FILE, self.kinds if self.kinds is not None else np.ones(1))
            files["kind_weights"] = KINDS_FILE
        return files

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> ItemToItem:
        model = cls(params)
        model.matrix = sp.load_npz(directory / cls.matrix_file).tocsr()
        if cls.weighs_kinds:
            model.kinds = np.load(directory / KINDS_FILE)
        model.n_items = data.n_items
        return model


def row_top(matrix: sp.csr_matrix, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of one row (ties: lower position first)."""
    start, end = matrix.indptr[item], matrix.indptr[item + 1]
    idx, val = matrix.indices[start:end], matrix.data[start:end]
    order = np.lexsort((idx, -val))[:k]
    return idx[order].astype(np.int64), val[order].astype(np.float32)


def largest(terms: sp.csr_matrix, n: int) -> list[Reason]:
    """The n largest positive entries of a one-row matrix, as reasons (item = column)."""
    row = terms.tocoo()
    positive = row.data > 0
    cols, vals = row.col[positive], row.data[positive]
    order = np.lexsort((cols, -vals))[:n]
    return [Reason(int(cols[i]), float(vals[i])) for i in order]
