"""SR-GNN (Wu et al. 2019): a gated graph neural network over the user's current session, scored against every item.

Per request, from the user's latest events (oldest first):
  1. the current session: the trailing events with no gap longer than the session gap between them,
     consecutive repeats dropped, the last `max_len` kept;
  2. its graph: nodes = distinct items, edge a → b (0/1) if a is directly followed by b, A_in / A_out
     normalised by in- / out-degree;
  3. `n_steps` gated graph steps (messages along in- and out-edges, then a GRU cell);
  4. readout: s_l = the last item's node state, s_g = Σ_i α_i v_i with α_i = q · σ(W1 s_l + W2 v_i + c),
     s = W3 [s_l ; s_g] + b;
  5. score(j) = s · e_j over every item.

Real time by construction: the graph is built from the latest events at request time and scored in
one numpy forward pass (no state: `stateful = False`; the artifact and the UPs carry each user's latest
`recent_events` events). Training (JAX, `recsys.models.neural.srgnn_jax`, imported inside `fit`
only): sessions from the log's session ids where it has them, else a gap in event time longer than
`session_gap_s`; every prefix of a session predicts its next item (softmax cross-entropy over the
catalogue), Adam with coupled L2 and lr × `lr_decay` every `lr_decay_epochs` (the paper's settings),
bounded by `time_budget_s`. Requests have no session ids, so with session ids in training the
request-time gap is learned: the 99th percentile of the gaps inside training sessions (capped by
`session_gap_s`), so a request's "current session" looks like a training session.

Explanations: the global part of the score is linear in the attention-weighted node states, so item
j's score splits over the session's positions exactly, share_i = α_i · e_j · W3_g v_i, plus the last
position's local part e_j · W3_l s_l (the bias e_j · b is left out): "because you viewed X" names the
session item with the largest share. Similar items: cosine of the item embeddings.

Defaults: the study's validation choices on MovieLens-100K (d = 64, L = 20, one step, lr 1e-3, L2 1e-5,
× 0.1 every 3 epochs, batch 256, 6 epochs, 1-hour gap).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from pydantic import Field

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.models.base import AnyParams, Params, Reason, Recommender
from recsys.models.capabilities import with_new_items
from recsys.topk import most_similar, normalize_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
WEIGHTS_FILE = "srgnn.npz"
META = ("max_len", "n_steps", "request_gap_ms")


class SRGNNParams(Params):
    dim: int = Field(64, ge=1, description="Embedding and node-state size.")
    max_len: int = Field(20, ge=1, description="A session is cut to its last max_len items.")
    n_steps: int = Field(1, ge=1, description="Gated graph propagation steps.")
    lr: float = Field(1e-3, gt=0)
    l2: float = Field(1e-5, ge=0, description="Coupled L2 (on the gradient, as torch Adam's weight_decay).")
    lr_decay: float = Field(0.1, gt=0, le=1)
    lr_decay_epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(6, ge=1)
    time_budget_s: float = Field(540.0, gt=0, description="Training stops when this has passed (hard bound).")
    session_gap_s: int = Field(3600, ge=1, description="Without session ids: a longer gap starts a new session.")
    output: Literal["logit", "probability"] = Field(
        "logit", description="score(): the logits s · e_j, or their softmax (the next-item probability)."
    )
    seed: int = 0


class SRGNN(Recommender):
    name = "srgnn"
    Params = SRGNNParams
    recent_events = 50  # the current session is cut from these (at most max_len of them after dedupe)

    def __init__(self, params: SRGNNParams | None = None) -> None:
        super().__init__(params)
        self.params: SRGNNParams
        self.scorer: SRGNNScorer | None = None
        self.history: list[dict] = []

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"training": self.history} if self.history else {}
        if self.scorer is not None:
            out["request_gap_ms"] = self.scorer.gap_ms
        return out

    # --- batch fit ---------------------------------------------------------------------------
    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        from recsys.models.neural import srgnn_jax  # JAX only here: serving and the speed layer never import it

        p = self.params
        examples, gap_ms = training_examples(data, p.session_gap_s * 1000)
        flat, begins, ends, targets = examples
        weights, self.history = srgnn_jax.train(
            flat,
            begins,
            ends,
            targets,
            data.n_items,
            dim=p.dim,
            max_len=p.max_len,
            n_steps=p.n_steps,
            lr=p.lr,
            l2=p.l2,
            lr_decay=p.lr_decay,
            lr_decay_epochs=p.lr_decay_epochs,
            batch_size=p.batch_size,
            epochs=p.epochs,
            seed=p.seed,
            time_budget_s=p.time_budget_s,
        )
        weights["request_gap_ms"] = np.array(gap_ms, np.int64)
        log.info("srgnn trained on %d prefixes: %s", len(targets), self.history[-1] if self.history else "no data")
        self.scorer = SRGNNScorer(weights)
        self.n_items = data.n_items

    # --- scores --------------------------------------------------------------------------------
    @property
    def _scorer(self) -> SRGNNScorer:
        if self.scorer is None:
            raise RuntimeError("srgnn is not fitted")
        return self.scorer

    def session(self, ctx: UserContext) -> np.ndarray:
        """The user's current session as the model reads it (item positions, oldest first)."""
        s = self._scorer
        return current_session(ctx.recent, ctx.recent_ts_ms, s.gap_ms, s.max_len, s.n_items)

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        """One forward pass per user over their current session; -inf for a user without one (cannot rank)."""
        s = self._scorer
        vectors = np.zeros((len(users), s.dim), np.float32)
        empty = np.zeros(len(users), bool)
        for r, ctx in enumerate(users):
            seq = self.session(ctx)
            if len(seq):
                vectors[r] = s.session_vector(seq)
            else:
                empty[r] = True
        out = np.ascontiguousarray((s.item_emb @ vectors.T).T)
        if self.params.output == "probability":
            out -= out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        out[empty] = -np.inf
        return with_new_items(self, users, out, new)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return most_similar(self._scorer.unit_items(), item, k)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The session items carrying most of `item`'s score (exact split, see the module doc), largest first."""
        seq = self.session(user)
        if not len(seq) or item >= self._scorer.n_items:
            return []
        shares = self._scorer.position_shares(seq, item)
        per_item: dict[int, float] = {}
        for j, share in zip(seq.tolist(), shares.tolist(), strict=True):
            per_item[j] = per_item.get(j, 0.0) + share
        ranked = sorted(per_item.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [Reason(j, float(v)) for j, v in ranked]

    # --- files -----------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        # numpy's stub matches `**dict[str, ndarray]` against savez's `allow_pickle: bool` keyword.
        np.savez(directory / WEIGHTS_FILE, **self._scorer.weights)  # type: ignore[arg-type]
        return {"weights": WEIGHTS_FILE}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> SRGNN:
        model = cls(cast(SRGNNParams, params))
        with np.load(directory / WEIGHTS_FILE) as f:
            model.scorer = SRGNNScorer({k: f[k] for k in f.files})
        model.n_items = data.n_items
        return model


def training_examples(data: Dataset, gap_ms: int) -> tuple[tuple[np.ndarray, ...], int]:
    """(flat items, begins, ends, targets) of every session prefix, and the gap that cuts a request's session."""
    from recsys.models.neural.data import build_sessions, prefix_examples, session_starts, within_session_gaps

    starts = session_starts(data.events, gap_ms)
    request_gap = gap_ms
    if data.events.session is not None:
        gaps = within_session_gaps(data.events, starts)
        if len(gaps):
            request_gap = int(min(max(np.quantile(gaps, 0.99), 1000), gap_ms))
    sessions = build_sessions(data.events, starts)
    begins, ends, targets = prefix_examples(sessions)
    return (sessions.items, begins, ends, targets), request_gap


def current_session(items: np.ndarray, ts_ms: np.ndarray, gap_ms: int, max_len: int, n_items: int) -> np.ndarray:
    """The trailing events with no gap over `gap_ms` between them, items the model knows, consecutive repeats
    dropped, the last `max_len`."""
    items = np.asarray(items, np.int64)
    if not len(items):
        return items
    ts = np.asarray(ts_ms, np.int64)
    if len(ts) == len(items) and len(items) > 1:
        breaks = np.flatnonzero(np.diff(ts) > gap_ms)
        if len(breaks):
            items = items[breaks[-1] + 1 :]
    items = items[(items >= 0) & (items < n_items)]
    if len(items) > 1:
        items = items[np.r_[True, items[1:] != items[:-1]]]
    return items[-max_len:]


# --- numpy inference ---------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # never overflows


def session_graph(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(nodes, alias, A_in, A_out) of one session: nodes = distinct items in order of first occurrence, alias[p] =
    node of position p, A_in[b, a] = edge(a → b) / indeg(b), A_out[a, b] = edge(a → b) / outdeg(a)."""
    seq = np.asarray(seq, np.int64)
    nodes, first_pos, alias = np.unique(seq, return_index=True, return_inverse=True)
    order = np.argsort(first_pos, kind="stable")  # np.unique sorts by value: back to first-occurrence order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    nodes, alias = nodes[order], rank[alias.ravel()]
    n = nodes.size
    edge = np.zeros((n, n), np.float32)
    edge[alias[:-1], alias[1:]] = 1.0
    indeg, outdeg = edge.sum(axis=0), edge.sum(axis=1)
    a_in = edge.T / np.maximum(indeg, 1.0)[:, None]
    a_out = edge / np.maximum(outdeg, 1.0)[:, None]
    return nodes, alias, a_in, a_out


class SRGNNScorer:
    """SR-GNN forward pass from exported weights (the JAX trainer's names): session → session vector → scores."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = {k: np.asarray(v) for k, v in weights.items()}
        self.w = {k: np.asarray(v, np.float32) for k, v in weights.items() if k not in META}
        self.item_emb = np.ascontiguousarray(self.w["item_emb"])
        self.n_items, self.dim = self.item_emb.shape
        self.max_len = int(weights["max_len"])
        self.n_steps = int(weights["n_steps"])
        self.gap_ms = int(weights["request_gap_ms"]) if "request_gap_ms" in weights else 3_600_000
        self._unit: np.ndarray | None = None

    def _states(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(per-position node states, the last item's state s_l, attention α per position)."""
        w = self.w
        nodes, alias, a_in, a_out = session_graph(np.asarray(seq, np.int64)[-self.max_len :])
        h = self.item_emb[nodes]
        for _ in range(self.n_steps):
            h = self._ggnn_step(h, a_in, a_out)
        seq_h = h[alias]
        last = seq_h[-1]
        att = _sigmoid(last @ w["att_w1"] + w["att_b1"] + seq_h @ w["att_w2"] + w["att_b2"]) @ w["att_q"]
        return seq_h, last, att

    def session_vector(self, seq: np.ndarray) -> np.ndarray:
        seq_h, last, att = self._states(seq)
        return np.concatenate([last, att @ seq_h]) @ self.w["out_w"] + self.w["out_b"]

    def _ggnn_step(self, h: np.ndarray, a_in: np.ndarray, a_out: np.ndarray) -> np.ndarray:
        w, d = self.w, h.shape[-1]
        msg = np.concatenate(
            [
                a_in @ (h @ w["edge_in_w"] + w["edge_in_b"]) + w["iah"],
                a_out @ (h @ w["edge_out_w"] + w["edge_out_b"]) + w["oah"],
            ],
            axis=-1,
        )
        gi = msg @ w["gru_wi"] + w["gru_bi"]
        gh = h @ w["gru_wh"] + w["gru_bh"]
        r = _sigmoid(gi[:, :d] + gh[:, :d])
        z = _sigmoid(gi[:, d : 2 * d] + gh[:, d : 2 * d])
        n = np.tanh(gi[:, 2 * d :] + r * gh[:, 2 * d :])
        return n + z * (h - n)

    def scores(self, seq: np.ndarray) -> np.ndarray:
        return self.item_emb @ self.session_vector(seq)

    def position_shares(self, seq: np.ndarray, item: int) -> np.ndarray:
        """Per position of the (cut) session, its exact share of `item`'s score without the bias term."""
        seq_h, last, att = self._states(seq)
        d, e = self.dim, self.item_emb[item]
        w_local, w_global = self.w["out_w"][:d], self.w["out_w"][d:]
        shares = att * (seq_h @ (w_global @ e))
        shares[-1] += last @ (w_local @ e)
        return shares

    def unit_items(self) -> np.ndarray:
        if self._unit is None:
            self._unit = normalize_rows(self.item_emb)
        return self._unit
