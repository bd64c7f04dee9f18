"""NeuMF (He et al. 2017, neural collaborative filtering): GMF and MLP towers fused, on implicit feedback.

    GMF tower:  g_ui = p_u^G ⊙ q_i^G
    MLP tower:  h_ui = ReLU layers on [p_u^M ; q_i^M]        (sizes `mlp_layers`)
    fusion:     logit_ui = w · [g_ui ; h_ui] + b,   ŷ_ui = σ(logit_ui)

Batch: positives are the user's items (r_ui > 0, strength ignored), `negatives` uniformly
sampled unobserved items per positive, resampled every epoch; binary cross-entropy, Adam,
L2 on the embedding rows of each batch. Trained in JAX (`recsys.models.neural.neumf_jax`,
imported inside `fit` only); everything else here is numpy over the exported weights.

Real time (the analogue of ALS fold-in): a user's state is their two embeddings [p^G ; p^M].
`update_users` re-optimises only them on the user's history as it is now (distinct items, the
latest `update_max_positives`), with fresh negatives each step, item side and towers fixed,
Adam with a hand-written gradient (checked against `jax.grad` in the tests), bounded by
`update_steps` and a wall-clock deadline per user. A known user starts from their trained
embeddings, a new one from the mean user.

Serving: the MLP tower runs once per (user, item), which at 100,000 items costs ~50 ms a
request. So `score` ranks in two stages: a cheap retriever, the GMF dot product plus each
item's MLP-tower output at the *mean* user (precomputed), picks the `candidates` best items;
only those get the exact NeuMF logit. Items outside the candidates keep the retriever's order,
below every candidate. Exactness caveat: an item the retriever puts outside the candidates is
never re-scored, so the top-k can differ from exhaustive NeuMF scoring when the MLP tower's
user-specific part moves an item from far down the retriever's list; with `candidates` ≥ the
catalogue (or 0) scoring is exhaustive. `bench/neural.py` measures the top-10 overlap.

Defaults are the study's choices on validation carved from MovieLens-100K's train part
(GMF 32, MLP 32 per side → 64-32-16, lr 1e-3, L2 1e-5, 4 negatives, batch 256, 6 epochs;
update lr 0.03, 20 steps). On ML-100K NeuMF stays below ALS (README, Results).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from pydantic import Field

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.io.model_store import replace_file
from recsys.models.base import AnyParams, Params, Realtime, Reason, Recommender
from recsys.models.capabilities import with_new_items
from recsys.topk import most_similar, normalize_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
WEIGHTS_FILE = "neumf.npz"


class NeuMFParams(Params):
    gmf_dim: int = Field(32, ge=1, description="Predictive factors of the GMF tower.")
    mlp_dim: int = Field(32, ge=1, description="Embedding size per side of the MLP tower.")
    mlp_layers: tuple[int, ...] = Field((64, 32, 16), min_length=1, description="Hidden sizes of the MLP tower.")
    negatives: int = Field(4, ge=1, description="Sampled negatives per positive.")
    lr: float = Field(1e-3, gt=0)
    l2: float = Field(1e-5, ge=0, description="On the embedding rows of each batch.")
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(6, ge=1)
    time_budget_s: float = Field(540.0, gt=0, description="Training stops before an epoch that would end later.")
    seed: int = 0
    update_steps: int = Field(20, ge=1, description="Real-time update: Adam steps per user (at most).")
    update_lr: float = Field(0.03, gt=0)
    update_deadline_ms: float = Field(100.0, gt=0, description="Real-time update: wall-clock bound per user.")
    update_max_positives: int = Field(256, ge=1, description="Real-time update: the user's latest distinct items.")
    candidates: int = Field(1000, ge=0, description="Items re-scored exactly after the retriever (0: every item).")


class NeuMF(Recommender):
    name = "neumf"
    Params = NeuMFParams

    def __init__(self, params: NeuMFParams | None = None) -> None:
        super().__init__(params)
        self.params: NeuMFParams
        self.scorer: NeuMFScorer | None = None
        self.history: list[dict] = []

    @property
    def state_size(self) -> int:
        return self.params.gmf_dim + self.params.mlp_dim

    def describe(self) -> dict[str, object]:
        return {"training": self.history} if self.history else {}

    # --- batch fit ---------------------------------------------------------------------------
    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        from recsys.models.neural import neumf_jax  # JAX only here: serving and the speed layer never import it

        p = self.params
        coo = data.strengths.tocoo()
        keep = coo.data > 0
        weights, self.history = neumf_jax.train(
            coo.row[keep].astype(np.int32),
            coo.col[keep].astype(np.int32),
            data.n_users,
            data.n_items,
            gmf_dim=p.gmf_dim,
            mlp_dim=p.mlp_dim,
            mlp_layers=tuple(p.mlp_layers),
            negatives=p.negatives,
            lr=p.lr,
            l2=p.l2,
            batch_size=p.batch_size,
            epochs=p.epochs,
            seed=p.seed,
            time_budget_s=p.time_budget_s,
        )
        log.info("neumf trained: %s", self.history[-1] if self.history else "no data")
        self.scorer = NeuMFScorer(weights)
        self.n_items = data.n_items

    # --- real time -----------------------------------------------------------------------------
    def realtime(self, data: Dataset) -> Realtime:
        return Realtime(self)  # nothing to hold between micro-batches: each user's state is folded afresh

    def update_users(self, users: Sequence[UserContext]) -> np.ndarray:
        """Each user's two embeddings re-optimised on their history as it is now (item side fixed)."""
        out = np.zeros((len(users), self.state_size), np.float32)
        for r, ctx in enumerate(users):
            out[r] = np.concatenate(self._fold(ctx))
        return out

    def _fold(self, ctx: UserContext) -> tuple[np.ndarray, np.ndarray]:
        s, p = self._scorer, self.params
        start = s.user(ctx.row) if ctx.row is not None and 0 <= ctx.row < s.n_users else s.mean_user()
        history = ordered_history(ctx, s.n_items)
        if not len(history):
            return start
        seed = [p.seed, 0 if ctx.row is None else int(ctx.row) + 1, len(history)]
        res = update_user(
            s,
            history,
            start[0],
            start[1],
            np.random.default_rng(seed),
            max_steps=p.update_steps,
            deadline_s=p.update_deadline_ms / 1000.0,
            lr=p.update_lr,
            negatives=p.negatives,
            max_positives=p.update_max_positives,
        )
        return res.gmf, res.mlp

    def user_embeddings(self, ctx: UserContext) -> tuple[np.ndarray, np.ndarray]:
        """The speed layer's state where there is one, else the trained row, else a fold of the history, else the
        mean user."""
        s = self._scorer
        if ctx.state is not None:
            state = np.asarray(ctx.state, np.float32)
            return state[: s.gmf_dim], state[s.gmf_dim :]
        if ctx.row is not None and 0 <= ctx.row < s.n_users:
            return s.user(ctx.row)
        return self._fold(ctx)

    # --- scores --------------------------------------------------------------------------------
    @property
    def _scorer(self) -> NeuMFScorer:
        if self.scorer is None:
            raise RuntimeError("neumf is not fitted")
        return self.scorer

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        s = self._scorer
        out = np.empty((len(users), s.n_items), np.float32)
        for r, ctx in enumerate(users):
            gmf, mlp = self.user_embeddings(ctx)
            seen = ctx.items[(ctx.items >= 0) & (ctx.items < s.n_items)]
            out[r] = s.ranked_scores(gmf, mlp, self.params.candidates, n_seen=len(seen))
        return with_new_items(self, users, out, new)

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of the items' embeddings (GMF, weighted by the output layer, and MLP side by side)."""
        return most_similar(self._scorer.unit_items(), item, k)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """Gradient-free proxy: the user's items whose embeddings are closest (cosine) to the recommended item's."""
        unit = self._scorer.unit_items()
        if item >= len(unit):
            return []
        mine = np.unique(np.concatenate([user.items, user.recent]).astype(np.int64))
        mine = mine[(mine >= 0) & (mine < len(unit)) & (mine != item)]
        if not len(mine):
            return []
        share = unit[mine] @ unit[item]
        order = np.lexsort((mine, -share))[:n]
        return [Reason(int(mine[i]), float(share[i])) for i in order if share[i] > 0]

    # --- files -----------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        # numpy's stub matches `**dict[str, ndarray]` against savez's `allow_pickle: bool` keyword.
        np.savez(directory / WEIGHTS_FILE, **self._scorer.weights)  # type: ignore[arg-type]
        return {"weights": WEIGHTS_FILE}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> NeuMF:
        model = cls(cast(NeuMFParams, params))
        with np.load(directory / WEIGHTS_FILE) as f:
            model.scorer = NeuMFScorer({k: f[k] for k in f.files})
        model.n_items = data.n_items
        return model

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:

        with np.load(directory / WEIGHTS_FILE) as f:
            weights = {k: f[k] for k in f.files}
        for name in ("gmf_user", "mlp_user"):
            weights[name][rows] = 0.0
        replace_file(directory, WEIGHTS_FILE, lambda fh: np.savez(fh, **weights))


def ordered_history(ctx: UserContext, n_items: int) -> np.ndarray:
    """The user's items oldest first as far as the context knows: the whole history, then the latest events in order
    (so the last occurrence of an item is its latest)."""
    items = ctx.items[(ctx.strengths > 0) & (ctx.items >= 0) & (ctx.items < n_items)]
    recent = ctx.recent[(ctx.recent >= 0) & (ctx.recent < n_items)]
    return np.concatenate([items, recent]).astype(np.int64)


# --- numpy inference -------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # never overflows


class NeuMFScorer:
    """NeuMF logits from exported weights (a dict name → array, the JAX trainer's names); rank by logit.

    The MLP's first layer is split into a user half and an item half, W0 = [W0_u ; W0_i]; the item
    half `mlp_item @ W0_i + b0` is computed once, so a request costs one (n_items × h0) add plus the
    small layers. The GMF output weights are folded into the item table: w_g · (p ⊙ q) = p · (q ⊙ w_g).
    """

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        w = self.weights
        self.n_layers = sum(1 for k in w if k.startswith("mlp_w"))
        self.gmf_dim = w["gmf_user"].shape[1]
        mlp_dim = w["mlp_user"].shape[1]
        self.user_gmf, self.user_mlp = w["gmf_user"], w["mlp_user"]
        self.n_users = len(self.user_gmf)
        self.item_gmf = np.ascontiguousarray(w["gmf_item"] * w["out_w"][: self.gmf_dim])
        self.w0_user = w["mlp_w0"][:mlp_dim]
        self.item_pre0 = np.ascontiguousarray(w["mlp_item"] @ w["mlp_w0"][mlp_dim:] + w["mlp_b0"])
        self.layers = [(w[f"mlp_w{k}"], w[f"mlp_b{k}"]) for k in range(1, self.n_layers)]
        self.out_mlp = w["out_w"][self.gmf_dim :]
        self.out_b = float(w["out_b"])
        self.n_items = len(self.item_gmf)
        self._mean: tuple[np.ndarray, np.ndarray] | None = None
        self._item_bias: np.ndarray | None = None
        self._unit: np.ndarray | None = None

    def user(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        return self.user_gmf[row].copy(), self.user_mlp[row].copy()

    def mean_user(self) -> tuple[np.ndarray, np.ndarray]:
        if self._mean is None:
            self._mean = (self.user_gmf.mean(axis=0), self.user_mlp.mean(axis=0))
        return self._mean[0].copy(), self._mean[1].copy()

    def _tower(self, pre0: np.ndarray) -> np.ndarray:
        h = np.maximum(pre0, 0.0)
        for wk, bk in self.layers:
            h = np.maximum(h @ wk + bk, 0.0)
        return h @ self.out_mlp

    def logits(self, gmf_u: np.ndarray, mlp_u: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """Exact logits of one user (given by their two embeddings) for `items` (default: every item)."""
        pre0 = self.item_pre0 if items is None else self.item_pre0[items]
        gmf = self.item_gmf if items is None else self.item_gmf[items]
        return gmf @ gmf_u + self._tower(pre0 + mlp_u @ self.w0_user) + self.out_b

    def retrieval(self, gmf_u: np.ndarray) -> np.ndarray:
        """The cheap retriever over every item: GMF dot product + the MLP tower at the mean user (precomputed)."""
        if self._item_bias is None:
            mean_mlp = self.mean_user()[1]
            self._item_bias = (self._tower(self.item_pre0 + mean_mlp @ self.w0_user) + self.out_b).astype(np.float32)
        return self.item_gmf @ gmf_u + self._item_bias

    def ranked_scores(self, gmf_u: np.ndarray, mlp_u: np.ndarray, candidates: int, n_seen: int = 0) -> np.ndarray:
        """Scores over every item whose order is: the retriever's best `candidates` (+ `n_seen`, which a list
        leaves out anyway) by exact logit, then the rest in the retriever's order. Exhaustive when the candidates
        cover the catalogue or `candidates` is 0."""
        c = candidates + n_seen
        if candidates <= 0 or c >= self.n_items:
            return self.logits(gmf_u, mlp_u).astype(np.float32)
        retr = self.retrieval(gmf_u)
        cand = np.argpartition(-retr, c - 1)[:c]
        exact = self.logits(gmf_u, mlp_u, cand)
        rest = np.ones(self.n_items, bool)
        rest[cand] = False
        out = retr - retr[rest].max() + (exact.min() - 1.0)  # every non-candidate below every candidate
        out[cand] = exact
        return out.astype(np.float32)

    def unit_items(self) -> np.ndarray:
        if self._unit is None:
            self._unit = normalize_rows(np.hstack([self.item_gmf, self.weights["mlp_item"]]))
        return self._unit

    def loss_and_user_grads(
        self, gmf_u: np.ndarray, mlp_u: np.ndarray, items: np.ndarray, labels: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean BCE over (items, labels) and its gradient w.r.t. the user's GMF and MLP embeddings, by hand:
        dL/dz = (σ(z) − y) / n, back through the ReLU layers to the user half of the first layer."""
        pre = [self.item_pre0[items] + mlp_u @ self.w0_user]
        h = np.maximum(pre[0], 0.0)
        for wk, bk in self.layers:
            pre.append(h @ wk + bk)
            h = np.maximum(pre[-1], 0.0)
        gmf = self.item_gmf[items]
        z = gmf @ gmf_u + h @ self.out_mlp + self.out_b
        loss = float(np.mean(np.logaddexp(0.0, z) - labels * z))
        g = (_sigmoid(z) - labels) / len(items)
        grad_gmf = g @ gmf
        dh = g[:, None] * self.out_mlp[None, :]
        for (wk, _), p in zip(reversed(self.layers), reversed(pre[1:]), strict=True):
            dh = (dh * (p > 0)) @ wk.T
        grad_mlp = (dh * (pre[0] > 0)).sum(axis=0) @ self.w0_user.T
        return loss, grad_gmf.astype(np.float32), grad_mlp.astype(np.float32)


@dataclass(frozen=True)
class UpdateResult:
    gmf: np.ndarray
    mlp: np.ndarray
    steps: int
    seconds: float  # wall clock
    cpu_seconds: float  # this thread's CPU time: the cost without the machine's other load
    loss_first: float
    loss_last: float


def update_user(
    scorer: NeuMFScorer,
    history: np.ndarray,
    gmf_init: np.ndarray,
    mlp_init: np.ndarray,
    rng: np.random.Generator,
    max_steps: int = 20,
    deadline_s: float | None = 0.1,
    lr: float = 0.03,
    negatives: int = 4,
    max_positives: int = 256,
) -> UpdateResult:
    """Re-fit one user's embeddings on their history (oldest first), item side fixed: NeuMF's "fold-in".

    Positives: the distinct items, the latest `max_positives`; negatives: `negatives` uniform
    non-history items per positive, fresh every step (the training objective). Adam on the two
    user vectors only; stops after `max_steps` or once `deadline_s` (wall clock) has passed
    (None: steps only). At least one step is always taken.
    """
    t0, c0 = time.perf_counter(), time.thread_time()
    hist = np.asarray(history, np.int64)
    _, last = np.unique(hist[::-1], return_index=True)
    pos = hist[::-1][np.sort(last)][:max_positives]  # distinct, most recent first
    in_hist = np.zeros(scorer.n_items, bool)
    in_hist[hist] = True
    x = [np.array(gmf_init, np.float32), np.array(mlp_init, np.float32)]
    m: list[np.ndarray] = [np.zeros_like(v) for v in x]
    v2: list[np.ndarray] = [np.zeros_like(v) for v in x]
    b1, b2, eps = 0.9, 0.999, 1e-8
    labels = np.r_[np.ones(pos.size), np.zeros(pos.size * negatives)].astype(np.float32)
    first = last_loss = float("nan")
    step = 0
    free = scorer.n_items - int(in_hist.sum())
    while step < max_steps and (step == 0 or deadline_s is None or time.perf_counter() - t0 < deadline_s):
        neg = rng.integers(0, scorer.n_items, pos.size * negatives)
        clash = in_hist[neg]
        while clash.any() and free > 0:  # resample negatives that are history items
            neg[clash] = rng.integers(0, scorer.n_items, int(clash.sum()))
            clash = in_hist[neg]
        loss, g_gmf, g_mlp = scorer.loss_and_user_grads(x[0], x[1], np.r_[pos, neg], labels)
        step += 1
        first = loss if step == 1 else first
        last_loss = loss
        for j, g in enumerate((g_gmf, g_mlp)):
            m[j] = b1 * m[j] + (1 - b1) * g
            v2[j] = b2 * v2[j] + (1 - b2) * g * g
            x[j] -= lr * (m[j] / (1 - b1**step)) / (np.sqrt(v2[j] / (1 - b2**step)) + eps)
    return UpdateResult(x[0], x[1], step, time.perf_counter() - t0, time.thread_time() - c0, first, last_loss)
