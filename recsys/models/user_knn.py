"""User-based collaborative filtering with cosine or Pearson similarity, plus a popularity term.

For a user u with strengths r_u (their whole history: training data plus what arrived
since the cut-off), the similarity to every training user v is

    cosine:  sim(u, v) = r_u · r_v / (|r_u| |r_v|)
    pearson: the cosine of the mean-centred vectors over the items each user rated,
             sim(u, v) = Σ_i (r_ui − r̄_u)(r_vi − r̄_v) / (|r_u − r̄_u| |r_v − r̄_v|)

and the `neighbours` most similar users (positive similarity only) vote:

    score(u, i) = Σ_v sim(u, v) · r_vi / Σ_v |sim(u, v)|  +  pop_weight · pop_i / max pop

Real time: computed at request time from the user's current history, so a user whose
history changed gets new neighbours at once (the speed layer sends the history in the
user's UP; no state is solved for).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.io.model_store import replace_file
from recsys.models.base import AnyParams, Params, Reason, Recommender
from recsys.models.capabilities import with_new_items
from recsys.models.sparse import history_weights

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class UserKnnParams(Params):
    similarity: Literal["cosine", "pearson"] = "cosine"
    neighbours: int = Field(50, ge=1)
    pop_weight: float = Field(0.05, ge=0, description="Weight of the normalised popularity term.")
    binary: bool = Field(True, description="Use 1 for every touched item instead of r_ui (cosine only).")


class UserKNN(Recommender):
    name = "user_knn"
    Params = UserKnnParams

    def __init__(self, params: UserKnnParams | None = None) -> None:
        super().__init__(params)
        self.params: UserKnnParams
        self.users = sp.csr_matrix((0, 0), dtype=np.float32)  # normalised (centred) training rows
        self.votes = sp.csr_matrix((0, 0), dtype=np.float32)  # what each training user votes with: r_vi
        self.popularity = np.zeros(0, np.float32)

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.n_items = data.n_items
        raw = data.strengths.astype(np.float32).tocsr()
        self.votes = (raw > 0).astype(np.float32).tocsr() if self.params.binary else raw
        self.users = self._normalised(self.votes if self.params.similarity == "cosine" else raw)
        pop = data.popularity()
        self.popularity = (pop / max(float(pop.max(initial=0)), 1.0)).astype(np.float32)

    def _normalised(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        out = sp.csr_matrix(rows, dtype=np.float64, copy=True)
        if self.params.similarity == "pearson":
            counts = np.maximum(np.diff(out.indptr), 1)
            means = np.asarray(out.sum(axis=1)).ravel() / counts
            out.data -= np.repeat(means, np.diff(out.indptr))
        norms = np.sqrt(np.asarray(out.multiply(out).sum(axis=1)).ravel())
        out = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ out
        return out.astype(np.float32).tocsr()

    def neighbours(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        """(users × training users): the top similarities of each user, the rest zero; a user never votes for
        themself (their training row is who they are)."""
        binary = self.params.binary and self.params.similarity == "cosine"
        query = self._normalised(history_weights(users, self.n_items, binary=binary))
        sims = (query @ self.users.T).toarray()
        for r, ctx in enumerate(users):
            if ctx.row is not None and ctx.row < sims.shape[1]:
                sims[r, ctx.row] = 0.0
        sims[sims < 0] = 0.0
        k = min(self.params.neighbours, sims.shape[1])
        if k < sims.shape[1]:
            cut = np.argpartition(-sims, k - 1, axis=1)[:, k:]
            np.put_along_axis(sims, cut, 0.0, axis=1)
        return sp.csr_matrix(sims)

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        near = self.neighbours(users)
        mass = np.asarray(np.abs(near).sum(axis=1)).ravel()
        votes = np.asarray((near @ self.votes).todense(), dtype=np.float32)
        votes /= np.maximum(mass, 1e-12)[:, None]
        return with_new_items(self, users, votes + self.params.pop_weight * self.popularity[None, :], new)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The user's own items that the neighbours who voted for `item` share most with them."""
        near = self.neighbours([user]).tocoo()
        voters = near.col[np.asarray(self.votes[near.col, item].todense()).ravel() > 0]
        if not len(voters):
            return []
        shared = np.asarray(self.votes[voters].sum(axis=0)).ravel()
        mine = user.items[user.items < self.n_items]
        weight = shared[mine]
        order = np.lexsort((mine, -weight))[:n]
        return [Reason(int(mine[i]), float(weight[i])) for i in order if weight[i] > 0]

    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / "user_rows.npz", self.users)
        sp.save_npz(directory / "user_votes.npz", self.votes)
        np.save(directory / "popularity_norm.npy", self.popularity)
        return {"user_rows": "user_rows.npz", "user_votes": "user_votes.npz", "popularity_norm": "popularity_norm.npy"}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> UserKNN:
        model = cls(cast(UserKnnParams, params))
        model.users = sp.load_npz(directory / "user_rows.npz").tocsr()
        model.votes = sp.load_npz(directory / "user_votes.npz").tocsr()
        model.popularity = np.load(directory / "popularity_norm.npy")
        model.n_items = data.n_items
        return model

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:

        for name in ("user_rows.npz", "user_votes.npz"):
            matrix = sp.load_npz(directory / name).tolil()
            matrix[rows] = 0
            cleared = matrix.tocsr()
            cleared.eliminate_zeros()
            replace_file(directory, name, lambda f, m=cleared: sp.save_npz(f, m))


class UserKnnPearson(UserKNN):
    """The same model with Pearson similarity (a second registry entry, so the gate and bench see both)."""

    name = "user_knn_pearson"

    def __init__(self, params: UserKnnParams | None = None) -> None:
        super().__init__(params if params is not None else UserKnnParams(similarity="pearson", binary=False))
