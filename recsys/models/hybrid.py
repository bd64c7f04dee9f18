"""The session-aware hybrid: a validation-tuned blend of the other recommenders, then a logistic re-ranker.

Stage 1, the blend. Each component c scores every item for the user; its scores are put
on one scale per user (divided by the user's largest score over the items they have not
touched, so a user's own items never set the scale) and blended:

    s1(u, j) = Σ_c w_c · s_c(u, j) / max_{j' unseen} s_c(u, j')  +  1e-6 · pop_j / max pop

The popularity term only breaks ties and answers a user nothing else can score. The
components (study defaults, `DEFAULT_WEIGHTS`) are mostly session-aware: SLIT, EASE,
item-KNN, transitions and session-KNN all read the user's latest events, so one click moves
the list; ALS (exact fold-in) carries the long-term taste; content ranks items by their
attributes (cold items). SR-GNN (the gated graph network over the current session) can be
added as a component, not by default: its training (JAX, twice per hybrid fit: on the inner
split and on all the data) would be most of the hybrid's fit time (see `DEFAULT_WEIGHTS`).

Stage 2, the re-ranker (optional). The blend's top `rerank_candidates` unseen items are
re-ordered by a logistic regression on per-(user, candidate) features: each component's
normalised score, log popularity *shares* (plain, "late" — each event weighted by its
relative position in its user's history —, by position — what other users touched
around their n_u-th event, n_u = this user's history length — and recent — events in the
`recent_days` before the user's latest event), log stage-1 rank, each component score ×
log(history length), and log(history length). Shares, not counts, so they do not drift
as the data grows. The candidates keep the set of stage-1 score values; only their order
changes.

Everything learned from labels is learned inside `fit`, on a validation split carved from
the training data (per user, the latest `tune_share` of events: `datasets.holdout`):
components are fitted on the rest, blend weights chosen by coordinate ascent on
validation NDCG@10 (the `fixed` component's weight held: only ratios matter), the
re-ranker's L2 by 2-fold cross-validation over validation users (3 random partitions),
and the re-ranker is kept only if it beats the blend in that cross-validation. Then the
components and the priors are refitted on all the data. The test split is never seen.

Cold items (no training interaction) are scored by content alone and, as in the study, rarely reach the blend's
top 10 (bench: recall@10 on them 0.00): a content-ranked "new items" shelf is the place for them.

Real time: the stateful components (ALS: the exact fold-in) are updated as on their own;
the hybrid's state is their states end to end. Everything else, priors included, is read
from the request's `UserContext` (history length, latest events and their times).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.optimize import minimize

from recsys.models import registry
from recsys.models.base import AnyParams, Dataset, NewItems, Params, Realtime, Reason, Recommender, UserContext
from recsys.models.topk import _select_top, top_k_of_scores
from recsys.models.transitions import Transitions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.settings import Settings

log = logging.getLogger(__name__)

# The components and the weights chosen on validation carved from MovieLens-100K's train part (`bench/tune.py`);
# `fit` re-chooses them on its own validation split, starting from these, unless `tune` is off (then they are the
# blend). `fixed` is held during the search (only ratios matter).
# SR-GNN (`srgnn`) is not a default component: with it the hybrid's fit takes ~5x longer (its training runs twice, for
# the inner validation and for the final model; ~380 s against ~80 s on MovieLens-100K here) for +0.006 NDCG@10
# (0.2865 vs 0.2804, seed 0). Add it with `{"weights": {..., "srgnn": 0.0}}`: the search then decides its weight.
# NeuMF is not a component: added at 0 it earned a weight of 0.3 and no validation gain (0.2849 vs 0.2850), for two
# more fits.
DEFAULT_WEIGHTS = {"slit": 1.0, "implicit_als": 0.3, "ease": 0.5, "item_knn": 0.0, "transitions": 0.3,
                   "transitions_last": 0.3, "session_knn": 0.05, "content": 0.5}  # fmt: skip
GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
PRIORS = ("pop", "late", "position", "recent")
BLEND_FILE = "hybrid.json"
PRIORS_FILE = "hybrid_priors.npz"
HOUR_MS = 3_600_000


class HybridParams(Params):
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS),
                                      description="Blend weight per component (registry names): where the search "
                                                  "starts, or the blend itself when `tune` is off.")  # fmt: skip
    fixed: str = Field("slit", description="The component whose weight the search holds.")
    component_params: dict[str, dict] = Field(default_factory=dict, description="Hyper-parameters per component.")
    tune: bool = Field(True, description="Choose weights (and the re-ranker) on validation carved from training.")
    tune_share: float = Field(0.2, gt=0, lt=1)
    tune_users: int = Field(2000, ge=10, description="Validation users sampled for the search.")
    tune_cells: int = Field(
        30_000_000,
        ge=1000,
        description="At most users × items scores per component held while tuning (fewer users on large catalogues).",
    )
    tune_rounds: int = Field(3, ge=1)
    grid: tuple[float, ...] = GRID
    rerank: Literal["auto", "always", "never"] = Field("auto", description="auto: kept if it wins cross-validation.")
    rerank_candidates: int = Field(50, ge=2)
    rerank_l2: tuple[float, ...] = (3.0, 30.0, 300.0)
    position_window: int = Field(
        30,
        ge=1,
        description="Position prior: other users' events within ± this many positions of the user's history length.",
    )
    recent_days: float = Field(60.0, gt=0, description="Recent prior: events this many days before the user's latest.")
    seed: int = 42


class Hybrid(Recommender):
    name = "hybrid"
    Params = HybridParams
    stateful = True

    def __init__(self, params: HybridParams | None = None, settings: Settings | None = None) -> None:
        super().__init__(params)
        self.params: HybridParams
        self.settings = settings
        self.weights = dict(self.params.weights)
        self.components: dict[str, Recommender] = {}
        self.reranker: Reranker | None = None
        self.priors: Priors | None = None
        self.validation: dict = {}
        self.popularity = np.zeros(0, np.float32)
        self._pop_term: np.ndarray | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> Hybrid:
        return cls(settings=s)

    @property
    def recent_events(self) -> int:  # type: ignore[override]
        return max((m.recent_events for m in self.components.values()), default=Recommender.recent_events)

    # --- components ---------------------------------------------------------------------------
    def _make(self, name: str, seed: int) -> Recommender:
        model = registry.create(name, self.settings, self.params.component_params.get(name))
        if "seed" in type(model.params).model_fields:
            model = type(model)(model.params.model_copy(update={"seed": seed}))
        return model

    def _fit_components(self, data: Dataset, names: Sequence[str], spark: SparkSession | None) -> dict:
        out: dict[str, Recommender] = {}
        for name in names:
            model = self._make(name, self.params.seed)
            twin = _same_transitions(model, out.values())
            if twin is not None:
                model.share_fit(twin)  # type: ignore[attr-defined]  # transitions_last: the same matrix
            else:
                model.fit(data, spark)
            out[name] = model
        return out

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        p = self.params
        self.n_items = data.n_items
        names = list(p.weights)
        if p.tune:
            self.weights, self.reranker = self._tune(data, spark)
            log.info("hybrid weights chosen on validation: %s; re-ranker kept: %s", self.weights,
                     self.reranker is not None)  # fmt: skip
        elif p.rerank == "always":
            raise ValueError("the re-ranker is learned on validation: rerank='always' needs tune=True")
        needed = names if self.reranker is not None else [n for n in names if self.weights.get(n, 0) > 0]
        self.components = self._fit_components(data, needed, spark)
        self.popularity, self._pop_term = data.popularity(), None
        self.priors = Priors.fit(data, p.position_window, p.recent_days) if self.reranker is not None else None

    def _tune(self, data: Dataset, spark: SparkSession | None) -> tuple[dict[str, float], Reranker | None]:
        from recsys.data.datasets import holdout

        p = self.params
        train, relevant = holdout(data, p.tune_share)
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
        n_users = max(10, min(p.tune_users, p.tune_cells // max(data.n_items, 1)))
        if users.size > n_users:
            users = np.sort(np.random.default_rng(p.seed).choice(users, n_users, replace=False))
        names = list(p.weights)
        models = self._fit_components(train, names, spark)
        contexts = train.contexts(users, max(m.recent_events for m in models.values()))
        seen = _seen_rows(contexts, data.n_items)
        norm = {n: normalised(np.array(m.score(contexts), dtype=np.float32), seen) for n, m in models.items()}
        relevant = relevant[users]
        pop = data_pop_term(train.popularity())

        def ndcg_of(scores: np.ndarray) -> np.ndarray:
            scores = scores.copy()
            scores[seen] = -np.inf
            return _ndcg(_select_top(scores, 10)[0], relevant)

        single = {n: float(ndcg_of(b).mean()) for n, b in norm.items()}
        weights, best = coordinate_ascent(norm, lambda s: float(ndcg_of(s).mean()), dict(p.weights), p.fixed,
                                          p.grid, p.tune_rounds)  # fmt: skip
        self.validation = {"users": int(users.size), "components": single, "blend": best, "weights": weights}
        if p.rerank == "never":
            return weights, None
        stage1 = blend(norm, weights) + pop[None, :]
        priors = Priors.fit(train, p.position_window, p.recent_days)
        cand, feats = candidate_features(norm, priors, contexts, stage1, seen, p.rerank_candidates, list(names))
        labels = np.take_along_axis(relevant.toarray() > 0, cand, 1).astype(np.float64)
        reranker, self.validation["reranker_cv"] = choose_reranker(
            feats, labels, relevant, cand, p.rerank_l2, p.seed, p.rerank == "always", list(names)
        )
        return weights, reranker

    # --- real time ------------------------------------------------------------------------------
    @property
    def _stateful(self) -> list[tuple[str, Recommender]]:
        return [(n, m) for n, m in self.components.items() if m.stateful]

    @property
    def state_size(self) -> int:
        return sum(m.state_size for _, m in self._stateful)

    def _split_state(self, ctx: UserContext) -> dict[str, UserContext]:
        """Each component's view of the user: the same history, each its own slice of the state."""
        out, offset = {}, 0
        for name, model in self.components.items():
            view = UserContext(ctx.row, ctx.items, ctx.strengths, ctx.recent, ctx.recent_ts_ms, ctx.recent_kinds)
            if model.stateful and ctx.state is not None:
                view.state = ctx.state[offset : offset + model.state_size]
                offset += model.state_size
            out[name] = view
        return out

    def update_users(self, users: Sequence[UserContext]) -> np.ndarray | None:
        parts = [m.update_users(users) for _, m in self._stateful]
        arrays = [p for p in parts if p is not None]
        return np.hstack(arrays).astype(np.float32) if arrays else None

    def realtime(self, data: Dataset) -> Realtime:
        return HybridRealtime(self, data)

    # --- scores ---------------------------------------------------------------------------------
    def _views(self, users: Sequence[UserContext]) -> dict[str, list[UserContext]]:
        split = [self._split_state(u) for u in users]
        return {name: [s[name] for s in split] for name in self.components}

    def score(self, users: Sequence[UserContext]) -> np.ndarray:
        return self.score_all(users, NewItems())

    def score_new_items(self, users: Sequence[UserContext], new: NewItems) -> np.ndarray:
        return self.score_all(users, new)[:, self.n_items :]

    def component_scores(self, users: Sequence[UserContext], seen: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each component's scores over the model's items, normalised per user (see the module doc)."""
        views = self._views(users)
        seen = _seen_rows(users, self.n_items) if seen is None else seen
        return {name: normalised(np.array(model.score(views[name]), dtype=np.float32), seen)
                for name, model in self.components.items()}  # fmt: skip

    def score_all(self, users: Sequence[UserContext], new: NewItems) -> np.ndarray:
        """Stage 1 (+ the re-ranker) over the model's items; new items are scored by the stateful components."""
        seen_items = [u.items[(u.items < self.n_items) & (u.items >= 0)] for u in users]
        views = self._views(users)
        norm, scales = {}, {}
        for name, model in self.components.items():
            if self.weights.get(name, 0.0) <= 0 and self.reranker is None:
                continue
            raw = np.array(model.score(views[name]), dtype=np.float32)
            if not np.isfinite(raw).all():  # one pass to check; the three of nan_to_num only when needed
                np.nan_to_num(raw, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            scales[name] = _unseen_max(raw, seen_items)
            raw /= scales[name][:, None]
            norm[name] = raw
        total = np.zeros((len(users), self.n_items + len(new)), np.float32)
        total[:, : self.n_items] = blend(norm, self.weights)
        if self._pop_term is None or len(self._pop_term) != self.n_items:
            self._pop_term = data_pop_term(self.popularity)
        total[:, : self.n_items] += self._pop_term[None, :]
        if self.reranker is not None and len(users):
            seen = _seen_rows(users, self.n_items)
            stage1 = total[:, : self.n_items]
            cand, feats = candidate_features(norm, self.priors, users, stage1, seen,  # type: ignore[arg-type]
                                             self.reranker.n_candidates, self.reranker.components)  # fmt: skip
            total[:, : self.n_items] = self.reranker.rerank(cand, feats, stage1)
        if len(new):
            self._score_new(users, new, views, scales, total)
        return total

    def _score_new(self, users, new: NewItems, views, scales, total: np.ndarray) -> None:
        offset = 0
        for name, model in self.components.items():
            size = model.state_size if model.stateful else 0
            weight = self.weights.get(name, 0.0)
            if size and weight > 0:
                part = NewItems(new.ids, new.states[:, offset : offset + size])
                extra = np.array(model.score_new_items(views[name], part), dtype=np.float32)
                total[:, self.n_items :] += weight * _finite(extra) / scales[name][:, None]
            offset += size
        if not self._stateful:
            total[:, self.n_items :] = -np.inf

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Behavioural neighbours (item-CF, EASE, transitions, else ALS) when the item has any, else attributes'."""
        for name in ("item_knn", "ease", "transitions", "implicit_als", "spark_als", "content"):
            model = self.components.get(name)
            if model is not None:
                idx, val = model.similar_items(item, k)
                if len(idx):
                    return idx, val
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def bought_together(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        for model in self.components.values():
            idx, val = model.bought_together(item, k)
            if len(idx):
                return idx, val
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def similar_source(self, item: int) -> str:
        for name in ("item_knn", "ease", "transitions", "implicit_als", "spark_als"):
            model = self.components.get(name)
            if model is not None and len(model.similar_items(item, 1)[0]):
                return "batch"
        return "content" if "content" in self.components else "batch"

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The reasons of the component that contributes most to this item's blended score."""
        views = self._split_state(user)
        norm = self.component_scores([user])
        best, best_share = None, 0.0
        for name in self.components:
            share = self.weights.get(name, 0.0) * float(norm[name][0, item])
            if share > best_share:
                best, best_share = name, share
        return [] if best is None else self.components[best].explain(views[best], item, n)

    # --- files ------------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        files = {}
        for name, model in self.components.items():
            sub = directory / name
            sub.mkdir()
            files.update({f"{name}/{k}": f"{name}/{v}" for k, v in model.save(sub).items()})
        blend_file = {"weights": self.weights, "params": {n: m.params.model_dump() for n, m in self.components.items()},
                      "reranker": None if self.reranker is None else self.reranker.to_json(),
                      "validation": self.validation}  # fmt: skip
        (directory / BLEND_FILE).write_text(json.dumps(blend_file, indent=2, sort_keys=True, default=float))
        files["blend"] = BLEND_FILE
        if self.priors is not None:
            self.priors.save(directory / PRIORS_FILE)
            files["priors"] = PRIORS_FILE
        return files

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> Hybrid:
        model = cls(cast(HybridParams, params))
        saved = json.loads((directory / BLEND_FILE).read_text())
        model.weights = saved["weights"]
        model.validation = saved.get("validation", {})
        for name, component_params in saved["params"].items():
            component_cls = registry.model_class(name)
            model.components[name] = component_cls.load(
                directory / name, component_cls.Params.model_validate(component_params), data
            )
        if saved.get("reranker") is not None:
            model.reranker = Reranker.from_json(saved["reranker"])
            model.priors = Priors.load(directory / PRIORS_FILE)
        model.n_items = data.n_items
        model.popularity, model._pop_term = data.popularity(), None
        return model

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:
        # The priors are counts over all users (like the dataset's popularity): nothing per user to erase.
        for name in json.loads((directory / BLEND_FILE).read_text())["params"]:
            registry.model_class(name).erase_rows(directory / name, rows)

    def describe(self) -> dict[str, object]:
        return {"weights": self.weights, "reranker": self.reranker is not None, "validation": self.validation,
                **{f"{n}": m.describe() for n, m in self.components.items() if m.describe()}}  # fmt: skip


class HybridRealtime(Realtime):
    """The stateful components' real-time sides, their states end to end."""

    def __init__(self, model: Hybrid, data: Dataset) -> None:
        super().__init__(model)
        self.parts = [(name, m.realtime(data)) for name, m in model._stateful]

    @property
    def n_items(self) -> int:
        return min((r.n_items for _, r in self.parts), default=self.model.n_items)

    def users(self, keys: Sequence[str], contexts: Sequence[UserContext]) -> np.ndarray | None:
        states = [r.users(keys, contexts) for _, r in self.parts]
        arrays = [s for s in states if s is not None]
        return np.hstack(arrays).astype(np.float32) if arrays else None

    def new_items(self, positions: Sequence[int], touched_by: Sequence[dict[str, float]]) -> np.ndarray | None:
        states = [r.new_items(positions, touched_by) for _, r in self.parts]
        if not states or any(s is None for s in states):
            return None
        return np.hstack(cast("list[np.ndarray]", states)).astype(np.float32)  # none is None (checked above)

    def forget(self, key: str) -> None:
        for _, r in self.parts:
            r.forget(key)

    def state(self, key: str) -> np.ndarray | None:
        states = [r.state(key) for _, r in self.parts]
        if not states or any(s is None for s in states):
            return None
        return np.hstack(cast("list[np.ndarray]", states)).astype(np.float32)  # none is None (checked above)


# --- stage 1 ------------------------------------------------------------------------------------------
def _finite(scores: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(scores), scores, 0.0).astype(np.float32)


def _seen_rows(users: Sequence[UserContext], n_items: int) -> np.ndarray:
    """(users × items) bool: the items each user has touched (never recommended, never the scale)."""
    out = np.zeros((len(users), n_items), dtype=bool)
    for r, ctx in enumerate(users):
        items = ctx.items[(ctx.items < n_items) & (ctx.items >= 0)]
        out[r, items] = True
    return out


def _row_scale(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Each row's largest finite score over unseen items, 1 where nothing is positive."""
    if not scores.shape[1]:
        return np.ones(scores.shape[0], np.float32)
    top = np.max(np.where(seen | ~np.isfinite(scores), -np.inf, scores), axis=1)
    return np.where(top > 0, top, 1.0).astype(np.float32)


def _unseen_max(scores: np.ndarray, seen_items: Sequence[np.ndarray]) -> np.ndarray:
    """`_row_scale` of finite scores, given each row's seen positions: one pass over the row (serving's path)."""
    out = np.ones(len(scores), np.float32)
    for r, idx in enumerate(seen_items):
        if not scores.shape[1]:
            break
        row = scores[r]
        saved = row[idx].copy()
        row[idx] = -np.inf
        top = row.max()
        row[idx] = saved
        out[r] = top if top > 0 else 1.0
    return out


def normalised(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Scores divided by each row's largest score over unseen items (zeros stay zero: no evidence stays 0)."""
    return _finite(scores) / _row_scale(scores, seen)[:, None]


def blend(norm: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of normalised component scores (zero weights skipped)."""
    out = None
    for name, w in weights.items():
        if w > 0 and name in norm:
            if out is None:
                out = w * norm[name]
            else:
                out += w * norm[name]
    if out is None:
        shape = next(iter(norm.values())).shape if norm else (0, 0)
        return np.zeros(shape, np.float32)
    return out.astype(np.float32)


def data_pop_term(popularity: np.ndarray) -> np.ndarray:
    """1e-6 · pop / max pop: breaks ties and ranks for a user nothing else scores (a list is never by position)."""
    pop = np.asarray(popularity, dtype=np.float32)
    return (1e-6 * pop / max(float(pop.max(initial=0.0)), 1.0)).astype(np.float32)


def coordinate_ascent(norm: dict[str, np.ndarray], objective, start: dict[str, float], fixed: str,
                      grid: Sequence[float], rounds: int) -> tuple[dict[str, float], float]:  # fmt: skip
    """One weight at a time over `grid`, the others held, `fixed` never moved; stops when a round improves nothing."""
    weights = dict(start)
    best = objective(blend(norm, weights))
    for _ in range(rounds):
        improved = False
        for name in weights:
            if name == fixed:
                continue
            for value in grid:
                if value == weights[name]:
                    continue
                trial = {**weights, name: value}
                if not any(v > 0 for v in trial.values()):
                    continue
                score = objective(blend(norm, trial))
                if score > best + 1e-6:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights, best


def _ndcg(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Per-row NDCG of ranked item positions (-1 = padding) against a relevant-items matrix (rows aligned)."""
    from recsys.evaluation.metrics import per_user_metrics

    return per_user_metrics(top, relevant)["ndcg"]


# --- stage 2: the priors and the re-ranker ---------------------------------------------------------------
class Priors:
    """Popularity priors the re-ranker reads as log shares: plain, late, by position, recent (see the module doc)."""

    def __init__(self, pop: np.ndarray, late: np.ndarray, position: sp.csr_matrix, hours: sp.csc_matrix,
                 window: int = 30, days: float = 60.0, first_hour: int = 0) -> None:  # fmt: skip
        self.first_hour = first_hour
        self.pop, self.late = pop.astype(np.float64), late.astype(np.float64)
        self.position = _Counts(position)  # (positions × items) event counts
        self.hours = _Counts(hours)  # (hours × items) event counts
        self.window, self.days = window, days
        self._pop_share = self.pop / max(self.pop.sum(), 1e-12)
        self._late_share = self.late / max(self.late.sum(), 1e-12)

    @staticmethod
    def fit(data: Dataset, window: int = 30, days: float = 60.0) -> Priors:
        ev = data.events
        n_items = data.n_items
        ptr = ev.indptr(data.n_users)
        counts = np.diff(ptr)
        position = np.arange(len(ev)) - np.repeat(ptr[:-1], counts)
        relative = position / np.maximum(np.repeat(counts, counts) - 1, 1)
        late = np.bincount(ev.item, relative, minlength=n_items)
        n_pos = int(counts.max(initial=0)) + 1
        pos = sp.csr_matrix((np.ones(len(ev)), (position, ev.item)), shape=(n_pos, n_items))
        pos.sum_duplicates()
        hour = (ev.ts_ms // HOUR_MS).astype(np.int64)
        first = int(hour.min(initial=0))
        n_hours = int(hour.max(initial=0)) - first + 1 if len(ev) else 1
        hours = sp.csc_matrix((np.ones(len(ev)), (hour - first, ev.item)), shape=(n_hours, n_items))
        hours.sum_duplicates()
        return Priors(data.popularity(), late, pos, hours, window, days, first)

    def shares(self, users: Sequence[UserContext], cand: np.ndarray) -> np.ndarray:
        """(users × candidates × 4) log shares of the candidates under each prior."""
        out = np.zeros((*cand.shape, 4))
        out[..., 0] = self._pop_share[cand]
        out[..., 1] = self._late_share[cand]
        hours = round(self.days * 24)
        for r, ctx in enumerate(users):
            n = len(ctx.items)
            out[r, :, 2] = self.position.shares(cand[r], n - self.window, n + self.window)
            if len(ctx.recent_ts_ms):
                end = int(ctx.recent_ts_ms[-1]) // HOUR_MS - self.first_hour
                out[r, :, 3] = self.hours.shares(cand[r], end - hours + 1, end + 1)  # hours (end − window, end]
        return np.log(out + 1e-5)

    def save(self, path: Path) -> None:
        np.savez(path, pop=self.pop, late=self.late, window=self.window, days=self.days, first_hour=self.first_hour,
                 **_sparse_arrays("position", self.position.matrix.tocsr()),
                 **_sparse_arrays("hours", self.hours.matrix))  # fmt: skip

    @staticmethod
    def load(path: Path) -> Priors:
        f = np.load(path)
        position = sp.csr_matrix((f["position_data"], f["position_indices"], f["position_indptr"]),
                                 shape=tuple(f["position_shape"]))  # fmt: skip
        hours = sp.csc_matrix((f["hours_data"], f["hours_indices"], f["hours_indptr"]), shape=tuple(f["hours_shape"]))
        return Priors(f["pop"], f["late"], position, hours, int(f["window"]), float(f["days"]), int(f["first_hour"]))


class _Counts:
    """Event counts (rows: positions or hours, columns: items), read as one item's count over a row range in
    O(log): per item, its rows sorted with a running sum (CSC), and a running sum of the row totals."""

    def __init__(self, matrix: sp.spmatrix) -> None:
        self.matrix = sp.csc_matrix(matrix, dtype=np.float64)
        self.matrix.sort_indices()
        self._rows = np.concatenate([[0.0], np.cumsum(np.asarray(self.matrix.sum(axis=1)).ravel())])
        self._data = np.concatenate([[0.0], np.cumsum(self.matrix.data)])
        # Every stored entry's (column, row) as one sorted int64 key, column-major: one searchsorted over it finds,
        # for many columns at once, the same positions as a search inside each column's own slice.
        n_rows = max(self.matrix.shape[0], 1)
        columns = np.repeat(np.arange(self.matrix.shape[1], dtype=np.int64), np.diff(self.matrix.indptr))
        self._keys = columns * (n_rows + 1) + self.matrix.indices.astype(np.int64)
        self._stride = n_rows + 1

    def shares(self, items: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Each item's count in rows [lo, hi) over all counts in those rows (0 when there are none)."""
        n_rows = self.matrix.shape[0]
        lo, hi = int(np.clip(lo, 0, n_rows)), int(np.clip(hi, 0, n_rows))
        total = self._rows[hi] - self._rows[lo]
        if total <= 0:
            return np.zeros(len(items))
        base = np.asarray(items, dtype=np.int64) * self._stride
        a, b = np.searchsorted(self._keys, base + lo), np.searchsorted(self._keys, base + hi)
        return (self._data[b] - self._data[a]) / total


# Values typed Any: numpy's `savez` stub matches `**dict[str, ndarray]` against its `allow_pickle: bool` keyword.
def _sparse_arrays(prefix: str, m: sp.spmatrix) -> dict[str, Any]:
    return {f"{prefix}_data": m.data, f"{prefix}_indices": m.indices, f"{prefix}_indptr": m.indptr,
            f"{prefix}_shape": np.array(m.shape)}  # fmt: skip


def candidate_features(norm: dict[str, np.ndarray], priors: Priors, users: Sequence[UserContext],
                       stage1: np.ndarray, seen: np.ndarray, n_candidates: int,
                       components: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(candidates users × C, features users × C × F) for the stage-1 top-C unseen items (see the module doc)."""
    s = np.where(seen, -np.inf, stage1)
    if s.shape[0] <= 8:  # serving's few users: a sampled bound partitions only the scores above it (same answer)
        cand = np.stack([top_k_of_scores(row, n_candidates)[0] for row in s]) if len(s) else np.zeros((0, 0), int)
    else:
        cand, _ = _select_top(s, n_candidates)
    cand = np.where(cand < 0, 0, cand)  # padding (tiny catalogues): any position, its features are what they are
    comp = np.stack([np.take_along_axis(norm[c], cand, 1) if c in norm else np.zeros(cand.shape) for c in components],
                    axis=-1)  # fmt: skip
    rank = np.log1p(np.broadcast_to(np.arange(cand.shape[1], dtype=np.float64), cand.shape))[..., None]
    loglen = np.log1p(np.array([len(u.items) for u in users], np.float64))[:, None, None] * np.ones((*cand.shape, 1))
    feats = np.concatenate([comp, priors.shares(users, cand), rank, comp * loglen, loglen], axis=-1)
    return cand, feats


class Reranker:
    """L2-regularised logistic regression on the candidates' standardised features (intercept unpenalised)."""

    def __init__(self, coef: np.ndarray, mean: np.ndarray, std: np.ndarray, l2: float, n_candidates: int,
                 components: list[str]) -> None:  # fmt: skip
        self.coef, self.mean, self.std = np.asarray(coef), np.asarray(mean), np.asarray(std)
        self.l2, self.n_candidates, self.components = l2, n_candidates, components

    @staticmethod
    def fit(feats: np.ndarray, labels: np.ndarray, l2: float, components: list[str]) -> Reranker:
        flat = feats.reshape(-1, feats.shape[-1])
        mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-9
        coef = fit_logistic((flat - mean) / std, labels.reshape(-1), l2)
        return Reranker(coef, mean, std, l2, feats.shape[1], components)

    def rerank(self, cand: np.ndarray, feats: np.ndarray, stage1: np.ndarray) -> np.ndarray:
        """The candidates' stage-1 score values re-assigned in the re-ranker's order (they stay above the rest)."""
        order = self.order(feats)
        out = stage1.copy()
        values = np.sort(np.take_along_axis(stage1, cand, 1), axis=1)[:, ::-1]
        np.put_along_axis(out, np.take_along_axis(cand, order, 1), values, 1)
        return out

    def order(self, feats: np.ndarray) -> np.ndarray:
        z = ((feats - self.mean) / self.std) @ self.coef[:-1]
        return np.argsort(-z, axis=1, kind="stable")

    def to_json(self) -> dict:
        return {"coef": self.coef.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(), "l2": self.l2,
                "n_candidates": self.n_candidates, "components": self.components}  # fmt: skip

    @staticmethod
    def from_json(d: dict) -> Reranker:
        return Reranker(np.array(d["coef"]), np.array(d["mean"]), np.array(d["std"]), d["l2"], d["n_candidates"],
                        list(d["components"]))  # fmt: skip


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """argmin Σ log(1 + e^z) − y z + l2 ‖w‖², z = x w + b, by L-BFGS; returns [w..., b]."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ w
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = xb.T @ (p - y)
        grad[:-1] += 2.0 * l2 * w[:-1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + l2 * (w[:-1] @ w[:-1])), grad

    return minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 1000}).x


def choose_reranker(feats: np.ndarray, labels: np.ndarray, relevant: sp.csr_matrix, cand: np.ndarray,
                    l2_grid: Sequence[float], seed: int, always: bool = False,
                    components: list[str] | None = None) -> tuple[Reranker | None, dict]:  # fmt: skip
    """The re-ranker with the best cross-validated L2, refitted on every user, if it beats the blend's own order in
    that cross-validation (or `always`); None otherwise. Also returns the cross-validation figures."""
    cv = cross_validate(feats, labels, relevant, cand, l2_grid, seed)
    l2 = max(cv["reranked"], key=lambda k: cv["reranked"][k])
    cv["kept"] = bool(always or cv["reranked"][l2] > cv["blend"])
    cv["l2"] = float(l2)
    if not cv["kept"]:
        return None, cv
    return Reranker.fit(feats, labels, float(l2), list(components or [])), cv


def cross_validate(feats: np.ndarray, labels: np.ndarray, relevant: sp.csr_matrix, cand: np.ndarray,
                   l2_grid: Sequence[float], seed: int, repeats: int = 3) -> dict:  # fmt: skip
    """Mean validation NDCG@10 of the re-ranked candidates per L2 (2-fold over users, `repeats` partitions), and of
    the blend's own order, on the same users; plus the paired SE of the best L2's gain."""
    n = feats.shape[0]
    base = _ndcg(cand[:, :10], relevant)
    out: dict = {"blend": float(base.mean()), "reranked": {}, "paired_se": {}}
    for l2 in l2_grid:
        total = np.zeros(n)
        for rep in range(repeats):
            fold = np.random.default_rng(seed + rep).integers(0, 2, n)
            for f in (0, 1):
                train, test = fold != f, fold == f
                if not train.any() or not test.any():
                    continue
                model = Reranker.fit(feats[train], labels[train], l2, [])
                order = model.order(feats[test])
                total[test] += _ndcg(np.take_along_axis(cand[test], order, 1)[:, :10], relevant[np.flatnonzero(test)])
        total /= repeats
        out["reranked"][str(l2)] = float(total.mean())
        out["paired_se"][str(l2)] = float(np.std(total - base, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return out


def _same_transitions(model: Recommender, fitted) -> Transitions | None:
    if not isinstance(model, Transitions):
        return None
    for other in fitted:
        if isinstance(other, Transitions) and other.fit_key() == model.fit_key():
            return other
    return None
