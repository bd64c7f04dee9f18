"""Item-to-item transitions: what shoppers view, cart or buy after an item, scored from the latest events.

Batch: over every user's ordered events (within a session when the data has sessions),
each later event j within `window` steps after i adds

    T_ij += step_decay^(steps − 1)

then each row is normalised by the item's outgoing mass to the power `norm`
(1 = a transition probability, 0 = raw counts) and by the target's popularity to the
power `pop_damping` (so a transition to a hit says less than one to a niche item), and
the top `neighbours` are kept. Real time: nothing to compute; at request time

    score(u, j) = Σ_t decay^(age_t) · w(type_t) · T(i_t, j)

over the user's latest `last` events. "Bought together" is the same count restricted
to pairs of carts and purchases in one session (or one user when there are no sessions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.models.base import Dataset, EventLog, Params, Reason, Recommender, UserContext
from recsys.models.item_knn import _largest, _row_top
from recsys.models.sparse import dense, kind_weights, recent_weights, top_n_per_row

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

BOUGHT = ("add_to_cart", "purchase")


class TransitionsParams(Params):
    window: int = Field(3, ge=1, description="How many later events of the same sequence an item leads to.")
    step_decay: float = Field(0.5, gt=0, le=1, description="Weight of a transition one step further away.")
    norm: float = Field(1.0, ge=0, le=1, description="Row normalisation exponent (1: probabilities).")
    pop_damping: float = Field(0.0, ge=0, le=1, description="Divide by the target's popularity to this power.")
    neighbours: int = Field(100, ge=1)
    last: int = Field(10, ge=1, description="The user's latest events that select transitions.")
    decay: float = Field(0.7, gt=0, le=1, description="Weight of an event relative to the next newer one.")
    kind_weights: dict[str, float] = Field(default_factory=lambda: {"view": 1.0, "add_to_cart": 1.0, "purchase": 1.0})
    session_gap_s: int = Field(0, ge=0, description="Without session ids: a gap this long starts a new sequence "
                                                    "(0: a user's whole history is one sequence).")


class Transitions(Recommender):
    name = "transitions"
    Params = TransitionsParams

    def __init__(self, params: TransitionsParams | None = None) -> None:
        super().__init__(params)
        self.params: TransitionsParams
        self.transitions = sp.csr_matrix((0, 0), dtype=np.float32)
        self.together = sp.csr_matrix((0, 0), dtype=np.float32)
        self._kinds = np.ones(1)

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        p = self.params
        self.n_items = data.n_items
        self._kinds = kind_weights(data.event_types, p.kind_weights)
        sequence = sequence_ids(data.events, p.session_gap_s)
        counts = transition_counts(data.events, sequence, data.n_items, p.window, p.step_decay)
        self.transitions = top_n_per_row(normalise(counts, data.popularity(), p.norm, p.pop_damping), p.neighbours)
        bought = np.isin(np.asarray(data.event_types)[data.events.kind], BOUGHT) if len(data.events) else []
        picked = data.events.take(np.asarray(bought, dtype=bool))
        together = transition_counts(picked, sequence[np.asarray(bought, dtype=bool)], data.n_items, 50, 1.0)
        self.together = top_n_per_row(together + together.T, p.neighbours)

    def score(self, users: Sequence[UserContext]) -> np.ndarray:
        w = recent_weights(users, self.n_items, self.params.last, self.params.decay, self._kinds)
        return dense(w @ self.transitions)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _row_top(self.transitions, item, k)

    def bought_together(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _row_top(self.together, item, k)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        w = recent_weights([user], self.n_items, self.params.last, self.params.decay, self._kinds)
        return _largest(w.multiply(self.transitions[:, item].T).tocsr(), n)

    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / "transitions.npz", self.transitions)
        sp.save_npz(directory / "bought_together.npz", self.together)
        np.save(directory / "kind_weights.npy", self._kinds)
        return {"transitions": "transitions.npz", "bought_together": "bought_together.npz",
                "kind_weights": "kind_weights.npy"}  # fmt: skip

    @classmethod
    def load(cls, directory: Path, params: Params, data: Dataset) -> Transitions:
        model = cls(params)  # type: ignore[arg-type]
        model.transitions = sp.load_npz(directory / "transitions.npz").tocsr()
        model.together = sp.load_npz(directory / "bought_together.npz").tocsr()
        model._kinds = np.load(directory / "kind_weights.npy")
        model.n_items = data.n_items
        return model


def sequence_ids(events: EventLog, gap_s: int) -> np.ndarray:
    """A sequence number per event: a new sequence at each user change, session change, or time gap."""
    n = len(events)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.zeros(n, dtype=bool)
    start[0] = True
    start[1:] = events.user[1:] != events.user[:-1]
    if events.session is not None:
        start[1:] |= events.session[1:] != events.session[:-1]
    elif gap_s > 0:
        start[1:] |= np.diff(events.ts_ms) > gap_s * 1000
    return np.cumsum(start) - 1


def transition_counts(events: EventLog, sequence: np.ndarray, n_items: int, window: int,
                      step_decay: float) -> sp.csr_matrix:  # fmt: skip
    """T_ij: Σ over (i, then j within `window` steps in the same sequence) of step_decay^(steps − 1)."""
    rows, cols, vals = [], [], []
    for step in range(1, window + 1):
        same = sequence[step:] == sequence[:-step] if len(sequence) > step else np.zeros(0, dtype=bool)
        if not same.any():
            break
        src, dst = events.item[:-step][same], events.item[step:][same]
        differ = src != dst
        rows.append(src[differ])
        cols.append(dst[differ])
        vals.append(np.full(int(differ.sum()), step_decay ** (step - 1), np.float64))
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n_items, n_items), dtype=np.float64)  # fmt: skip
    out.sum_duplicates()
    return out


def normalise(counts: sp.csr_matrix, popularity: np.ndarray, norm: float, pop_damping: float) -> sp.csr_matrix:
    out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    mass = np.asarray(out.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    out.data = out.data / np.maximum(mass[rows], 1e-12) ** norm
    if pop_damping > 0:
        out.data = out.data / np.maximum(popularity[out.indices], 1.0) ** pop_damping
    return out.astype(np.float32)
