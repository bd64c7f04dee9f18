"""Item-to-item transitions: what shoppers view, cart or buy after an item, scored from the latest events.

Batch: over every user's ordered events (within a session when the data has sessions),
positions count distinct tie windows (ts // tie_ms: events in one window, such as a
page of ratings submitted at once, are unordered) or events (`tie_ms` 0). Each pair of
an earlier event i and a later event j at distance d = 1..`window` adds

    T_ij += step_decay^(d − 1)        T_ji += backward · step_decay^(d − 1)

and a pair inside one window (d = 0) adds the mean of both directions, (1 + backward) / 2,
to both: the order of a tie in the data is its sort key, not behaviour, and is never
learned. Each row is then normalised by the item's outgoing mass to the power `norm`
(1 = a transition probability, 0 = raw counts) and by the target's popularity to the
power `pop_damping`, and the top `neighbours` are kept. Real time: nothing to compute; at
request time

    score(u, j) = Σ_t decay^(age_t) · w(type_t) · T(i_t, j)

over the user's latest `last` events, age in tie windows. `transitions_last` is the same
matrix queried with (practically) the last window only, "what follows what I just did":
the component that makes a blend react to one click. "Bought together" is the plain
count over pairs of carts and purchases in one session (or one user without sessions).

Defaults: chosen on validation carved from MovieLens-100K's train part (`bench/tune.py`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field

from recsys.data.inputs import Dataset, EventLog
from recsys.io import spark_counts
from recsys.io.spark_counts import use_spark
from recsys.models.base import AnyParams, Params
from recsys.models.item_to_item import ItemToItem, row_top
from recsys.models.sparse import kind_weights, tie_groups, top_n_per_row

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

BOUGHT = ("add_to_cart", "purchase")


class TransitionsParams(Params):
    window: int = Field(5, ge=1, description="How many later tie windows (or events) of a sequence an item leads to.")
    step_decay: float = Field(0.8, gt=0, le=1, description="Weight of a transition one step further away.")
    backward: float = Field(0.5, ge=0, le=1, description="Weight of the reverse direction (1: co-occurrence).")
    tie_ms: int = Field(1000, ge=0, description="Events within one window ts // tie_ms are unordered (0: by row).")
    max_steps: int = Field(200, ge=1, description="Pairs are counted at most this many events apart (cost guard).")
    norm: float = Field(1.0, ge=0, le=1, description="Row normalisation exponent (1: probabilities).")
    pop_damping: float = Field(0.0, ge=0, le=1, description="Divide by the target's popularity to this power.")
    neighbours: int = Field(500, ge=1)
    last: int = Field(10, ge=1, description="The user's latest events that select transitions.")
    decay: float = Field(0.7, gt=0, le=1, description="Weight of an event relative to the next newer one.")
    kind_weights: dict[str, float] = Field(default_factory=lambda: {"view": 1.0, "add_to_cart": 1.0, "purchase": 1.0})
    session_gap_s: int = Field(
        0,
        ge=0,
        description="Without session ids: a gap this long starts a new sequence "
        "(0: a user's whole history is one sequence).",
    )


class Transitions(ItemToItem):
    name = "transitions"
    Params = TransitionsParams
    matrix_file = "transitions.npz"
    weighs_kinds = True

    def __init__(self, params: TransitionsParams | None = None) -> None:
        super().__init__(params)
        self.together = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        p = cast(TransitionsParams, self.params)
        self.n_items = data.n_items
        self.kinds = kind_weights(data.event_types, p.kind_weights)
        sequence = sequence_ids(data.events, p.session_gap_s)
        count = transition_counts_by_spark if use_spark(spark, len(data.events)) else transition_counts
        counts = count(
            data.events, sequence, data.n_items, p.window, p.step_decay, p.backward, p.tie_ms, p.max_steps, spark=spark
        )
        self.matrix = top_n_per_row(normalise(counts, data.popularity(), p.norm, p.pop_damping), p.neighbours)
        bought: np.ndarray | list[bool] = (
            np.isin(np.asarray(data.event_types)[data.events.kind], BOUGHT) if len(data.events) else []
        )
        picked = data.events.take(np.asarray(bought, dtype=bool))
        together = count(picked, sequence[np.asarray(bought, dtype=bool)], data.n_items, 50, 1.0, spark=spark)
        self.together = top_n_per_row(together + together.T, p.neighbours)

    def fit_key(self) -> dict:
        """The hyper-parameters the fitted matrices depend on (two models equal here can share them)."""
        return self.params.model_dump(exclude={"last", "decay", "kind_weights"})

    def share_fit(self, other: Transitions) -> None:
        """Use another fitted model's matrices (same `fit_key`): `transitions_last` inside the hybrid."""
        self.matrix, self.together, self.kinds, self.n_items = other.matrix, other.together, other.kinds, other.n_items

    def bought_together(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return row_top(self.together, item, k)

    def save(self, directory: Path) -> dict[str, str]:
        sp.save_npz(directory / "bought_together.npz", self.together)
        return {**super().save(directory), "bought_together": "bought_together.npz"}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> Transitions:
        model = cast(Transitions, super().load(directory, params, data))
        model.together = sp.load_npz(directory / "bought_together.npz").tocsr()
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


def transition_counts(
    events: EventLog,
    sequence: np.ndarray,
    n_items: int,
    window: int,
    step_decay: float,
    backward: float = 0.0,
    tie_ms: int = 0,
    max_steps: int = 200,
    spark: SparkSession | None = None,
) -> sp.csr_matrix:
    """T_ij over pairs (i earlier, j later, same sequence) at distance d = 1..`window`: step_decay^(d − 1), and
    `backward` times that to T_ji; d counts tie windows (`tie_ms` > 0) or events, and a pair inside one window
    adds (1 + backward) / 2 both ways. Pairs more than `max_steps` events apart are not counted (cost guard)."""
    group = tie_groups(events.user, events.ts_ms, tie_ms, sequence) if tie_ms > 0 else np.arange(len(sequence))
    rows, cols, vals = [], [], []
    for step in range(1, max_steps + 1):
        if len(sequence) <= step:
            break
        dist = group[step:] - group[:-step]
        near = (sequence[step:] == sequence[:-step]) & (dist <= window)
        if not near.any():
            break  # distances only grow with the step
        src, dst, d = events.item[:-step][near], events.item[step:][near], dist[near]
        differ = src != dst
        src, dst, d = src[differ], dst[differ], d[differ]
        forward = np.where(d == 0, 0.5 * (1.0 + backward), step_decay ** np.maximum(d - 1, 0).astype(np.float64))
        reverse = np.where(d == 0, forward, backward * forward)
        rows += [src, dst]
        cols += [dst, src]
        vals += [forward, reverse]
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float64)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items), dtype=np.float64
    )
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _transition_pieces(part: pd.DataFrame, n_items: int, **how: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`transition_counts` of some whole sequences of the log, as (row, col, value): T is a sum over sequences."""
    log = EventLog(
        part["user"].to_numpy(), part["item"].to_numpy(), part["ts_ms"].to_numpy(), np.zeros(len(part), np.int8)
    )
    t = transition_counts(log, part["sequence"].to_numpy(), n_items, **how).tocoo()  # type: ignore[arg-type]
    return t.row, t.col, t.data


def transition_counts_by_spark(
    events: EventLog,
    sequence: np.ndarray,
    n_items: int,
    window: int,
    step_decay: float,
    backward: float = 0.0,
    tie_ms: int = 0,
    max_steps: int = 200,
    spark: SparkSession | None = None,
) -> sp.csr_matrix:
    """`transition_counts`, the sequences counted by Spark tasks and the pieces summed by Spark (`spark_counts`)."""
    assert spark is not None
    how = {"window": window, "step_decay": step_decay, "backward": backward, "tie_ms": tie_ms, "max_steps": max_steps}
    columns = {"user": events.user, "item": events.item, "ts_ms": events.ts_ms, "sequence": sequence}
    return spark_counts.summed(
        spark, columns, sequence, functools.partial(_transition_pieces, n_items=n_items, **how), (n_items, n_items)
    )


def normalise(counts: sp.csr_matrix, popularity: np.ndarray, norm: float, pop_damping: float) -> sp.csr_matrix:
    out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    mass = np.asarray(out.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    out.data = out.data / np.maximum(mass[rows], 1e-12) ** norm
    if pop_damping > 0:
        out.data = out.data / np.maximum(popularity[out.indices], 1.0) ** pop_damping
    return out.astype(np.float32)


class TransitionsLast(Transitions):
    """The same transitions queried with the last tie window only (a second registry entry, like user_knn_pearson):
    what follows what the user did just now. Alone it is a "next step" list; in the hybrid it makes one click move
    the blend (the reactivity target) at no cost in accuracy."""

    name = "transitions_last"

    def __init__(self, params: TransitionsParams | None = None) -> None:
        super().__init__(params if params is not None else TransitionsParams(last=5, decay=0.3))
