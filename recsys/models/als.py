"""Implicit-feedback ALS (Hu, Koren, Volinsky 2008) with two engines, and the fold-in math both layers share.

For user u with strengths r_ui over items I(u):

    c_ui = 1 + alpha * r_ui      (objective.confidence == "one_plus_alpha_r", Spark MLlib)
         = alpha * r_ui          (objective.confidence == "alpha_r", the `implicit` library)
    lambda_u = reg * |I(u)|      (objective.reg_scaling == "count", Spark's ALS-WR)
             = reg               (objective.reg_scaling == "none")

    x_u = (YᵀY + Σ_i (c_ui − 1) y_i y_iᵀ + lambda_u I)⁻¹ · Σ_i c_ui y_i

Items fold in the same way with the roles swapped (XᵀX instead of YᵀY). This module is
the one implementation of that math: the speed layer folds users in with it, serving
explains with it, the tests check the batch engines against it. The Gram matrix is
computed once per model, and many users are solved in one batched call.

Engines (one recommender each in the registry):
- `spark_als`: Spark MLlib's implicit ALS (confidence 1 + αr, λ scaled by |I(u)|);
- `implicit_als`: the `implicit` library with exact Cholesky solves (confidence αr, unscaled λ),
  exact rather than conjugate-gradient so a fold-in reproduces the trained vector.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, cast

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.io.model_store import replace_file
from recsys.models.base import AnyParams, Params, Realtime, Reason, Recommender
from recsys.models.capabilities import with_new_items
from recsys.models.norm_index import NormIndex
from recsys.topk import normalize_rows, top_k_of_scores

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.settings import Settings

SOLVE_CHUNK = 1024


class Objective(BaseModel):
    """Which implicit-ALS objective the factors minimise; the speed layer folds in with exactly this."""

    confidence: Literal["one_plus_alpha_r", "alpha_r"]
    reg_scaling: Literal["count", "none"]
    alpha: float = Field(gt=0)
    reg: float = Field(ge=0)


def confidence(objective: Objective, strengths: np.ndarray) -> np.ndarray:
    scaled = objective.alpha * np.asarray(strengths, dtype=np.float64)
    return 1.0 + scaled if objective.confidence == "one_plus_alpha_r" else scaled


def regulariser(objective: Objective, n_interactions: int | np.ndarray) -> float | np.ndarray:
    """lambda_u for one count, or for each of an array of counts."""
    return objective.reg * (n_interactions if objective.reg_scaling == "count" else 1)


def explain_shares(
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
    """Solves for vectors against fixed `factors` (the other side) under one objective.

    The solves run in the eigenbasis of the Gram matrix YᵀY = Q Λ Qᵀ, where it is diagonal: with the rotated
    factors Ỹ = Y Q, a row's system is (Λ + λ_u I + Ỹᵀ W Ỹ) x̃ = Ỹᵀ c (W = diag(c − 1) over its entries), and
    x = Q x̃. A history of L ≤ rank entries is solved by the Woodbury identity,

        x̃ = D (b − Ỹᵀ (I + W Ỹ D Ỹᵀ)⁻¹ W Ỹ D b),   D = (Λ + λ_u I)⁻¹,  b = Ỹᵀ c,

    an L x L system instead of rank x rank (most histories since a cut-off are short); a longer one by the
    rank x rank system itself. Both are the same exact solution, to float rounding.
    """

    def __init__(self, factors: np.ndarray, objective: Objective) -> None:
        # float64 for the solves: the normal equations square the condition number.
        self._factors = np.array(factors, dtype=np.float64)
        self.n = len(self._factors)
        self.objective = objective
        self.gram = self.factors.T @ self.factors
        self.rank = self._factors.shape[1]
        eigenvalues, self._basis = np.linalg.eigh(self.gram)
        self._eigenvalues = np.maximum(eigenvalues, 0.0)  # YᵀY is positive semi-definite: clip rounding below 0
        self._rotated = self._factors @ self._basis

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
            size = max(needed, 2 * len(self._factors))
            self._factors, self._rotated = (_grown(a, self.n, size) for a in (self._factors, self._rotated))
        self._factors[indices] = vectors
        self._rotated[indices] = self._factors[indices] @ self._basis
        self.n = max(self.n, needed)

    def confidence(self, strengths: np.ndarray) -> np.ndarray:
        return confidence(self.objective, strengths)

    def regulariser(self, n_interactions: int | np.ndarray) -> float | np.ndarray:
        return regulariser(self.objective, n_interactions)

    def vector(self, indices: np.ndarray, strengths: np.ndarray) -> np.ndarray:
        """The vector of one user (or item) who interacted with `indices` with `strengths` (r > 0)."""
        return self.vectors(sp.csr_matrix((strengths, indices, [0, len(indices)]), shape=(1, self.n)))[0]

    def vectors(self, rows: sp.csr_matrix) -> np.ndarray:
        """Vectors for every row of a (rows x n) strength matrix, solved in one batch.

        Rows without a positive strength get a zero vector (nothing is known about them).
        """
        rows = sp.csr_matrix(rows)
        if rows.shape[0] > SOLVE_CHUNK:  # bounds the systems held at once
            return np.vstack([self.vectors(rows[i : i + SOLVE_CHUNK]) for i in range(0, rows.shape[0], SOLVE_CHUNK)])
        n = rows.shape[0]
        positive = rows.data > 0
        indptr = np.concatenate([[0], np.cumsum(positive)])[rows.indptr]  # each row's positive entries
        counts = np.diff(indptr)
        y = self._rotated[rows.indices[positive]]
        c = self.confidence(rows.data[positive])
        rhs = sp.csr_matrix((c, np.arange(len(c)), indptr), shape=(n, len(c))) @ y  # Ỹᵀ c per row
        diagonal = self._eigenvalues + np.broadcast_to(self.regulariser(counts), (n,))[:, None]  # Λ + λ_u
        out = np.zeros((n, self.rank))
        # Rows grouped by length rounded up to a power of two, each group's entries padded with zeros to that
        # length (at most twice the work): one stacked solve per group instead of a Python loop over rows.
        width = np.where(counts > 0, 2 ** np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64), 0)
        for padded in np.unique(width[width > 0]).tolist():
            members = np.flatnonzero(width == padded)
            inside = np.arange(padded) < counts[members, None]  # (rows, padded)
            at = np.where(inside, indptr[members, None] + np.arange(padded), 0)
            ys = y[at] * inside[..., None]  # (rows, padded, rank), zero where padded
            ws = (c[at] - 1.0) * inside  # zero where padded: those entries add nothing
            solve = _woodbury if padded <= self.rank else _direct
            out[members] = solve(ys, ws, diagonal[members], rhs[members])
        return (out @ self._basis.T).astype(np.float32)


def _woodbury(ys: np.ndarray, ws: np.ndarray, diagonal: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x̃ = D (b − Ỹᵀ (I + W Ỹ D Ỹᵀ)⁻¹ W Ỹ D b) for stacked rows: ys (rows, L, rank), ws (rows, L)."""
    d = 1.0 / diagonal
    scaled = ys * d[:, None, :]  # Ỹ D
    system = ws[:, :, None] * (scaled @ ys.transpose(0, 2, 1))  # W Ỹ D Ỹᵀ
    system[:, *np.diag_indices(ys.shape[1])] += 1.0
    s = np.linalg.solve(system, (ws * (scaled @ b[..., None])[..., 0])[..., None])
    return d * (b - (ys.transpose(0, 2, 1) @ s)[..., 0])


def _direct(ys: np.ndarray, ws: np.ndarray, diagonal: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x̃ = (Λ + λ_u I + Ỹᵀ W Ỹ)⁻¹ b for stacked rows."""
    system = ys.transpose(0, 2, 1) @ (ys * ws[..., None])
    system[:, *np.diag_indices(ys.shape[2])] += diagonal
    return np.linalg.solve(system, b[..., None])[..., 0]


def _grown(a: np.ndarray, used: int, size: int) -> np.ndarray:
    grown = np.zeros((size, a.shape[1]))
    grown[:used] = a[:used]
    return grown


def history_matrix(contexts: Sequence[UserContext], n_items: int) -> sp.csr_matrix:
    """The users' strengths as a (users x n_items) matrix; positions at or beyond n_items are left out."""
    rows, cols, vals = [], [], []
    for r, ctx in enumerate(contexts):
        keep = ctx.items < n_items
        cols.append(ctx.items[keep])
        vals.append(ctx.strengths[keep])
        rows.append(np.full(int(keep.sum()), r))
    if not contexts:
        return sp.csr_matrix((0, n_items), dtype=np.float64)
    # Duplicates (a training item seen again since) are summed by the constructor.
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(contexts), n_items)
    )


# --- the recommender ---------------------------------------------------------------------------
class AlsParams(Params):
    rank: int = Field(64, ge=1)
    iterations: int = Field(15, ge=1)
    reg: float = Field(ge=0)
    alpha: float = Field(gt=0)
    seed: int = 42


class ImplicitAlsParams(AlsParams):
    # The library's default few conjugate-gradient steps instead of exact solves: only to measure the library as it
    # ships; a fold-in then no longer reproduces the trained vectors exactly.
    conjugate_gradient: bool = False


class _ALS(Recommender):
    """Shared by both engines: everything but the fit and the objective."""

    additive_explanations = True  # Hu et al.: the shares of the fold-in sum to its score
    Params: ClassVar[type[AlsParams]] = AlsParams
    DEFAULT_REG: ClassVar[float]
    DEFAULT_ALPHA: ClassVar[float]

    def __init__(self, params: AlsParams | None = None) -> None:
        super().__init__(params if params is not None else self.Params(reg=self.DEFAULT_REG, alpha=self.DEFAULT_ALPHA))
        self.params: AlsParams
        self.user_factors = np.zeros((0, self.params.rank), np.float32)
        self.item_factors = np.zeros((0, self.params.rank), np.float32)
        self._gram: np.ndarray | None = None
        self._unit_items: np.ndarray | None = None
        self._norm_index: NormIndex | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> _ALS:
        return cls(
            cls.Params(
                rank=s.als_rank,
                iterations=s.als_iterations,
                seed=s.als_seed,
                reg=s.als_reg if s.als_reg is not None else cls.DEFAULT_REG,
                alpha=s.als_alpha if s.als_alpha is not None else cls.DEFAULT_ALPHA,
            )
        )

    @property
    def objective(self) -> Objective:
        raise NotImplementedError

    @property
    def state_size(self) -> int:
        return self.params.rank

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.user_factors, self.item_factors = self.fit_factors(data.strengths, spark)
        self.n_items = data.n_items
        self._gram = self._unit_items = self._norm_index = None

    def fit_factors(self, strengths: sp.csr_matrix, spark: SparkSession | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # real time
    def update_users(self, users: Sequence[UserContext]) -> np.ndarray:
        """Exact fold-in of each user's whole history against the fixed item factors."""
        return self.folder().vectors(history_matrix(users, self.n_items))

    def folder(self) -> FoldIn:
        return FoldIn(self.item_factors, self.objective)

    def realtime(self, data: Dataset) -> AlsRealtime:
        return AlsRealtime(self, data)

    def describe(self) -> dict[str, object]:
        return {"objective": self.objective.model_dump()}

    # scores
    @property
    def gram(self) -> np.ndarray:
        if self._gram is None:
            y = np.asarray(self.item_factors, dtype=np.float64)
            self._gram = y.T @ y
        return self._gram

    def user_vectors(self, users: Sequence[UserContext]) -> np.ndarray:
        """The speed layer's state where there is one, else the batch vector, else zeros."""
        out = np.zeros((len(users), self.params.rank), np.float32)
        n = len(self.user_factors)
        at, rows = [], []  # the batch vectors, copied in one fancy-indexing step (serving scores 64 users at once)
        for r, ctx in enumerate(users):
            if ctx.state is not None:
                out[r] = ctx.state
            elif ctx.row is not None and ctx.row < n:
                at.append(r)
                rows.append(ctx.row)
        if rows:
            out[at] = self.user_factors[rows]
        return out

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        v = self.user_vectors(users)
        # Y·Vᵀ streams the item matrix once; BLAS runs it several times faster than V·Yᵀ here.
        return with_new_items(
            self, users, np.ascontiguousarray((np.asarray(self.item_factors, dtype=np.float32) @ v.T).T), new
        )

    def recommend_many(
        self,
        users: Sequence[UserContext],
        k: int,
        exclude: Sequence[np.ndarray | None],
        allowed: Sequence[np.ndarray | None],
        new: NewItems | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-k by a norm-bounded scan of the item factors (`recsys.models.norm_index`): the same answer as
        sorting every item's float32 score, reading only the blocks of items whose norm can still reach the top k."""
        if not len(users):
            return []
        states = new.states if new is not None and len(new) else None
        return self.norm_index.top_k(self.user_vectors(users), k, exclude, allowed, states)

    @property
    def norm_index(self) -> NormIndex:
        """The item factors sorted by norm (a float32 copy, built on first use)."""
        if self._norm_index is None:
            self._norm_index = NormIndex(self.item_factors)
        return self._norm_index

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of the factors, cos(i, j) = y_i·y_j / (|y_i| |y_j|), the item itself left out."""
        if self._unit_items is None:
            self._unit_items = normalize_rows(self.item_factors)
        target = self._unit_items[item]
        if not target.any():
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = self._unit_items @ target
        scores[item] = -np.inf
        idx, val = top_k_of_scores(scores, k)
        keep = (idx >= 0) & (val > 0)
        return idx[keep], val[keep]

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        keep = (user.items < self.n_items) & (user.strengths > 0)
        if not keep.any() or item >= self.n_items:
            return []
        items = user.items[keep]
        y = np.asarray(self.item_factors[items], dtype=np.float64)
        shares = explain_shares(self.gram, self.objective, y, user.strengths[keep], self.item_factors[item])
        order = np.argsort(-shares, kind="stable")[:n]
        return [Reason(int(items[i]), float(shares[i])) for i in order]

    # files
    def save(self, directory: Path) -> dict[str, str]:
        files = {"user_factors": "user_factors.npy", "item_factors": "item_factors.npy"}
        np.save(directory / files["user_factors"], np.ascontiguousarray(self.user_factors, dtype=np.float32))
        np.save(directory / files["item_factors"], np.ascontiguousarray(self.item_factors, dtype=np.float32))
        return files

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:

        factors = np.load(directory / "user_factors.npy")
        factors[rows] = 0
        replace_file(directory, "user_factors.npy", lambda f: np.save(f, factors))

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> _ALS:
        model = cls(cast(AlsParams, params))
        model.user_factors = np.load(directory / "user_factors.npy", mmap_mode="r")
        model.item_factors = np.load(directory / "item_factors.npy", mmap_mode="r")
        model.n_items = data.n_items
        return model


class SparkALS(_ALS):
    """Spark MLlib's implicit ALS: c = 1 + αr, λ scaled by each user's (and item's) interaction count."""

    name = "spark_als"
    DEFAULT_REG = 0.1  # tuned on MovieLens-100K's time split
    DEFAULT_ALPHA = 0.3

    @property
    def objective(self) -> Objective:
        return Objective(
            confidence="one_plus_alpha_r", reg_scaling="count", alpha=self.params.alpha, reg=self.params.reg
        )

    def fit_factors(self, strengths: sp.csr_matrix, spark: SparkSession | None) -> tuple[np.ndarray, np.ndarray]:
        if spark is None:
            raise ValueError("the spark_als engine needs a SparkSession")
        return fit_spark(strengths, self.params, spark)


class ImplicitALS(_ALS):
    """The `implicit` library's ALS with exact solves: c = αr, unscaled λ."""

    name = "implicit_als"
    Params = ImplicitAlsParams
    DEFAULT_REG = 20.0  # tuned on MovieLens-100K's time split
    DEFAULT_ALPHA = 1.0

    @property
    def objective(self) -> Objective:
        return Objective(confidence="alpha_r", reg_scaling="none", alpha=self.params.alpha, reg=self.params.reg)

    def fit_factors(self, strengths: sp.csr_matrix, spark: SparkSession | None) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        cg = bool(getattr(p, "conjugate_gradient", False))
        return fit_implicit(strengths, p.rank, p.reg, p.alpha, p.iterations, seed=p.seed, use_cg=cg)


# --- the speed layer's side ------------------------------------------------------------------------
class AlsRealtime(Realtime):
    """The two growing factor tables the speed layer folds against, for one batch model.

    Users are solved against the item factors (YᵀY once per model), new items against the
    user factors, where users folded in since the model replace (or extend) their rows.
    """

    reads_recent_events = False  # `users` folds in items and strengths only (`history_matrix`)

    def __init__(self, model: _ALS, data: Dataset | None) -> None:
        super().__init__(model)
        self.users_side = FoldIn(model.item_factors, model.objective)
        self.items_side = FoldIn(model.user_factors, model.objective)
        ids = [] if data is None else data.user_ids.tolist()
        self.rows: dict[str, int] = {u: i for i, u in enumerate(ids)}

    @property
    def n_items(self) -> int:
        return self.users_side.n

    def users(self, keys: Sequence[str], contexts: Sequence[UserContext]) -> np.ndarray:
        vectors = self.users_side.vectors(history_matrix(contexts, self.users_side.n))
        self.items_side.set_vectors(np.array([self._row(k) for k in keys], dtype=np.int64), vectors)
        return vectors

    def new_items(self, positions: Sequence[int], touched_by: Sequence[dict[str, float]]) -> np.ndarray:
        # Every user who touched a new item since the cut-off, every micro-batch the item is touched: one pass of
        # list comprehensions (no per-entry appends), CSR straight from the rows' lengths (each row's users are
        # distinct dict keys: nothing to sum), indices sorted as the COO route would leave them.
        keys = [key for users in touched_by for key in users]
        row_of = self.rows.get
        cols = [row_of(key) for key in keys]
        if None in cols:  # a user without a row yet (users() gives every touched user one first)
            cols = [self._row(key) for key in keys]
        vals = [strength for users in touched_by for strength in users.values()]
        indptr = np.concatenate([[0], np.cumsum([len(users) for users in touched_by])])
        matrix = sp.csr_matrix((vals, cols, indptr), shape=(len(positions), self.items_side.n))
        matrix.sort_indices()
        vectors = self.items_side.vectors(matrix)
        self.users_side.set_vectors(np.asarray(positions, dtype=np.int64), vectors)
        return vectors

    def forget(self, key: str) -> None:
        row = self.rows.get(key)
        if row is not None and row < self.items_side.n:
            self.items_side.set_vectors(np.array([row]), np.zeros((1, self.items_side.rank)))

    def state(self, key: str) -> np.ndarray | None:
        row = self.rows.get(key)
        return None if row is None or row >= self.items_side.n else self.items_side.factors[row].astype(np.float32)

    def _row(self, key: str) -> int:
        """The user's row among the user factors (users new since the model get one after the model's)."""
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = max(len(self.rows), self.items_side.n)
        return row


# --- engines -------------------------------------------------------------------------------------
def fit_implicit(
    matrix: sp.spmatrix,
    factors: int,
    regularization: float,
    alpha: float,
    iterations: int,
    seed: int = 0,
    num_threads: int = 0,
    use_cg: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """implicit's CPU ALS on a (users x items) strength matrix; returns float32 (user_factors, item_factors).

    Objective (implicit 0.7): c_ui = alpha · r_ui, p_ui = 1 for r_ui > 0, unscaled λ.
    `use_cg=False` solves each least-squares step exactly (Cholesky) instead of implicit's
    default few conjugate-gradient steps. `num_threads` = 0 uses every core for implicit's
    own threads; BLAS is held to one thread meanwhile, because implicit's threads each call
    BLAS and nested pools oversubscribe the cores (implicit warns about exactly this; the
    limit removes the cause, and the warning is silenced in case threadpoolctl cannot see it).
    """
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*threadpool.*", category=RuntimeWarning)
        # The CPU class directly: implicit.als.AlternatingLeastSquares(use_gpu=False) without the GPU probe.
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            use_cg=use_cg,
            calculate_training_loss=False,
            num_threads=num_threads,
            random_state=seed,
        )
        model.fit(sp.csr_matrix(matrix, dtype=np.float32), show_progress=False)
    return _as_float32(model.user_factors), _as_float32(model.item_factors)


def _as_float32(factors: object) -> np.ndarray:
    """implicit's CPU factors are numpy already; GPU ones have `.to_numpy()`."""
    to_numpy = getattr(factors, "to_numpy", None)
    return np.ascontiguousarray(to_numpy() if callable(to_numpy) else np.asarray(factors), dtype=np.float32)


def fit_spark(strengths: sp.csr_matrix, params: AlsParams, spark: SparkSession) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd
    from pyspark.ml.recommendation import ALS

    coo = strengths.tocoo()
    ratings = spark.createDataFrame(
        pd.DataFrame({"u": coo.row.astype(np.int32), "i": coo.col.astype(np.int32), "r": coo.data.astype(np.float32)})
    )
    blocks = max(2, spark.sparkContext.defaultParallelism)
    als = ALS(
        rank=params.rank,
        maxIter=params.iterations,
        regParam=params.reg,
        alpha=params.alpha,
        implicitPrefs=True,
        userCol="u",
        itemCol="i",
        ratingCol="r",
        seed=params.seed,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        coldStartStrategy="drop",
    )
    sc = spark.sparkContext
    if sc.getCheckpointDir() is None:
        # Without a checkpoint folder ALS never cuts its lineage, and at 15 iterations deserialising a task's
        # RDD chain overflows the JVM stack (seen in the nightly DAG on MovieLens-100K). With one, ALS checkpoints
        # every `checkpointInterval` (10) iterations. The folder lives as long as this process; on a cluster,
        # set a shared one before calling this.
        scratch = tempfile.mkdtemp(prefix="recsys-als-checkpoints-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sc.setCheckpointDir(scratch)
    model = als.fit(ratings)
    n_users, n_items = strengths.shape
    return _dense(model.userFactors, n_users, params.rank), _dense(model.itemFactors, n_items, params.rank)


def _dense(factors, n: int, rank: int) -> np.ndarray:
    """Spark's (id, features) rows as a dense (n, rank) array; ids without a row stay zero."""
    table = factors.toArrow()
    out = np.zeros((n, rank), dtype=np.float32)
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks()
    out[ids] = np.asarray(features.flatten(), dtype=np.float32).reshape(len(ids), rank)
    return out
