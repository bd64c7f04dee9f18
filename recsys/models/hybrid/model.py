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
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from pydantic import Field

from recsys import registry
from recsys.data.datasets import holdout
from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.models.base import AnyParams, Params, Realtime, Reason, Recommender
from recsys.models.capabilities import (
    SimilarSource,
    Updating,
    bought_together,
    new_item_scores,
    state_size,
    updates_users,
)
from recsys.models.content import Content
from recsys.models.hybrid import candidates
from recsys.models.hybrid.blend import (
    BlendTop,
    blend,
    coordinate_ascent,
    data_pop_term,
    finite,
    ndcg,
    normalised,
    seen_rows,
    unseen_max,
)
from recsys.models.hybrid.content_index import ContentIndex
from recsys.models.hybrid.reranker import Priors, Reranker, candidate_features, choose_reranker
from recsys.models.transitions import Transitions
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {
    "slit": 1.0,
    "implicit_als": 0.3,
    "ease": 0.5,
    "item_knn": 0.0,
    "transitions": 0.3,
    "transitions_last": 0.3,
    "session_knn": 0.05,
    "content": 0.5,
}
GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
PRIORS = ("pop", "late", "position", "recent")
BLEND_FILE = "hybrid.json"
PRIORS_FILE = "hybrid_priors.npz"


class HybridParams(Params):
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Blend weight per component (registry names): where the search "
        "starts, or the blend itself when `tune` is off.",
    )
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
    serve_depth: int = Field(
        400,
        ge=1,
        description="Serving: each candidate source's first depth (deepened x4 per "
        "user until the top k is certified exact; `candidates.py`).",
    )
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
        self._pop_order = np.zeros(0, np.int64)
        self._content_indexes: dict[str, ContentIndex] = {}

    @classmethod
    def from_settings(cls, s: Settings) -> Hybrid:
        return cls(settings=s)

    @property
    def recent_events(self) -> int:  # type: ignore[override]
        return max((m.recent_events for m in self.components.values()), default=Recommender.recent_events)

    # --- components ---------------------------------------------------------------------------
    def _make(self, name: str, seed: int) -> Recommender:
        model = registry.create(name, self.settings or get_settings(), self.params.component_params.get(name))
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
            log.info(
                "hybrid weights chosen on validation: %s; re-ranker kept: %s", self.weights, self.reranker is not None
            )
        elif p.rerank == "always":
            raise ValueError("the re-ranker is learned on validation: rerank='always' needs tune=True")
        needed = names if self.reranker is not None else [n for n in names if self.weights.get(n, 0) > 0]
        self.components = self._fit_components(data, needed, spark)
        self.popularity, self._pop_term = data.popularity(), None
        self.priors = Priors.fit(data, p.position_window, p.recent_days) if self.reranker is not None else None

    def _tune(self, data: Dataset, spark: SparkSession | None) -> tuple[dict[str, float], Reranker | None]:
        p = self.params
        train, relevant = holdout(data, p.tune_share)
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
        n_users = max(10, min(p.tune_users, p.tune_cells // max(data.n_items, 1)))
        if users.size > n_users:
            users = np.sort(np.random.default_rng(p.seed).choice(users, n_users, replace=False))
        names = list(p.weights)
        models = self._fit_components(train, names, spark)
        contexts = train.contexts(users, max(m.recent_events for m in models.values()))
        seen = seen_rows(contexts, data.n_items)
        norm = {n: normalised(np.array(m.score(contexts), dtype=np.float32), seen) for n, m in models.items()}
        relevant = relevant[users]
        pop = data_pop_term(train.popularity())

        search = BlendTop(norm, seen, k=10)  # each trial's top 10 from the components' lists, not every item

        def ndcg_of(weights: dict[str, float]) -> float:
            return float(ndcg(search.top(weights), relevant).mean())

        single = {n: ndcg_of({n: 1.0}) for n in norm}
        weights, best = coordinate_ascent(ndcg_of, dict(p.weights), p.fixed, p.grid, p.tune_rounds)
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
    def _stateful(self) -> list[tuple[str, Updating]]:
        return [(n, m) for n, m in self.components.items() if updates_users(m)]

    @property
    def state_size(self) -> int:
        return sum(m.state_size for _, m in self._stateful)

    def _split_state(self, ctx: UserContext) -> dict[str, UserContext]:
        """Each component's view of the user: the same history, each its own slice of the state."""
        out, offset = {}, 0
        for name, model in self.components.items():
            view = UserContext(ctx.row, ctx.items, ctx.strengths, ctx.recent, ctx.recent_ts_ms, ctx.recent_kinds)
            if updates_users(model) and ctx.state is not None:
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

    def recommend_many(
        self,
        users: Sequence[UserContext],
        k: int,
        exclude: Sequence[np.ndarray | None],
        allowed: Sequence[np.ndarray | None],
        new: NewItems | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The exact top k from candidates, not from every item (`candidates.py`): what serving calls. Below
        `candidates.TWO_STAGE_FROM` items the dense scores give the same answers for less (`dense_top`)."""
        if not len(users):
            return []
        new = new if new is not None else NewItems()
        if self.n_items < candidates.TWO_STAGE_FROM:
            return candidates.dense_top(self, users, k, exclude, allowed, new)
        return candidates.recommend_many(self, users, k, exclude, allowed, new, self.params.serve_depth)

    @property
    def pop_term(self) -> np.ndarray:
        """The blend's popularity term per item (`blend.data_pop_term`), computed once."""
        if self._pop_term is None or len(self._pop_term) != self.n_items:
            self._pop_term = data_pop_term(self.popularity)
            self._pop_order = np.lexsort((np.arange(self.n_items), -self._pop_term))
        return self._pop_term

    @property
    def pop_order(self) -> np.ndarray:
        """Item positions by decreasing popularity term (ties: lower position first): serving's popular source."""
        _ = self.pop_term
        return self._pop_order

    def content_index(self, name: str) -> ContentIndex:
        """The serving index of a content component (`content_index.py`), built on first use."""
        indexes = self.__dict__.setdefault("_content_indexes", {})  # a model unpickled from before it had one
        if name not in indexes:
            indexes[name] = ContentIndex(cast(Content, self.components[name]).features)
        return indexes[name]

    def component_scores(self, users: Sequence[UserContext], seen: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each component's scores over the model's items, normalised per user (see the module doc)."""
        views = self._views(users)
        seen = seen_rows(users, self.n_items) if seen is None else seen
        return {
            name: normalised(np.array(model.score(views[name]), dtype=np.float32), seen)
            for name, model in self.components.items()
        }

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        """Stage 1 (+ the re-ranker) over the model's items; new items are scored by the factor components. The
        dense definition: serving ranks from candidates (`recommend_many`), tests and benchmarks compare."""
        new = new if new is not None else NewItems()
        seen_items = [u.items[(u.items < self.n_items) & (u.items >= 0)] for u in users]
        views = self._views(users)
        norm, scales = {}, {}
        for name, model in self.components.items():
            if self.weights.get(name, 0.0) <= 0 and self.reranker is None:
                continue
            raw = _own_float32(model.score(views[name]))
            if not np.isfinite(raw).all():  # one pass to check; the three of nan_to_num only when needed
                np.nan_to_num(raw, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            scales[name] = unseen_max(raw, seen_items)
            raw /= scales[name][:, None]
            norm[name] = raw
        total = np.zeros((len(users), self.n_items + len(new)), np.float32)
        total[:, : self.n_items] = blend(norm, self.weights)
        total[:, : self.n_items] += self.pop_term[None, :]
        if self.reranker is not None and len(users):
            seen = seen_rows(users, self.n_items)
            stage1 = total[:, : self.n_items]
            cand, feats = candidate_features(
                norm,
                self.priors,  # type: ignore[arg-type]  # set whenever the re-ranker is
                users,
                stage1,
                seen,
                self.reranker.n_candidates,
                self.reranker.components,
            )
            total[:, : self.n_items] = self.reranker.rerank(cand, feats, stage1)
        if len(new):
            total[:, self.n_items :] = self.new_item_scores(new, views, scales)
        return total

    def new_item_scores(
        self, new: NewItems, views: dict[str, list[UserContext]], scales: dict[str, np.ndarray]
    ) -> np.ndarray:
        """(users × new items): the updating components' blend, each on its per-user scale; -inf if none updates."""
        n_users = len(next(iter(views.values()))) if views else 0
        out = np.zeros((n_users, len(new)), np.float32)
        offset = 0
        for name, model in self.components.items():
            size = state_size(model)
            weight = self.weights.get(name, 0.0)
            if size and weight > 0:
                part = NewItems(new.ids, new.states[:, offset : offset + size])
                extra = np.array(new_item_scores(model, views[name], part), dtype=np.float32)
                out += weight * finite(extra) / scales[name][:, None]
            offset += size
        if not self._stateful:
            out[:, :] = -np.inf
        return out

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
            idx, val = bought_together(model, item, k)
            if len(idx):
                return idx, val
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def similar_source(self, item: int) -> SimilarSource:
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
        blend_file = {
            "weights": self.weights,
            "params": {n: m.params.model_dump() for n, m in self.components.items()},
            "reranker": None if self.reranker is None else self.reranker.to_json(),
            "validation": self.validation,
        }
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
        return {
            "weights": self.weights,
            "reranker": self.reranker is not None,
            "validation": self.validation,
            **{f"{n}": m.describe() for n, m in self.components.items() if m.describe()},
        }


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


def _same_transitions(model: Recommender, fitted) -> Transitions | None:
    if not isinstance(model, Transitions):
        return None
    for other in fitted:
        if isinstance(other, Transitions) and other.fit_key() == model.fit_key():
            return other
    return None


def _own_float32(scores: np.ndarray) -> np.ndarray:
    """The component's score block as a float32 array this caller may change in place: itself when the component
    made it fresh (no copy of a users x items block), a copy when it is a view or of another type."""
    if isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.base is None and scores.flags.writeable:
        return scores
    return np.array(scores, dtype=np.float32)
