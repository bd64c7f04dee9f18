"""The session-aware hybrid: a weighted blend of the other recommenders, weights tuned on validation from train.

Each component c scores every item for the user; its scores are put on one scale per
user (divided by the user's largest score for that component, so every component's
best item scores 1) and blended:

    score(u, j) = Σ_c w_c · s_c(u, j) / max_j' s_c(u, j')

Recency enters through the components that read the latest events (item-CF and
transitions weigh the newest events most), so one click moves the list.

`fit` carves a validation split out of the training data (per user, the latest
`tune_share` of events, the evaluation protocol's rule), fits the components on the
rest, chooses the weights by coordinate ascent on validation NDCG@10, then refits the
components on all the data with those weights. The test split is never seen.

Real time: the stateful components (ALS: the exact fold-in) are updated as on their
own; the hybrid's state is their states end to end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from recsys.models import registry
from recsys.models.base import Dataset, NewItems, Params, Realtime, Reason, Recommender, UserContext

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = {"implicit_als": 1.0, "item_knn": 1.0, "transitions": 1.0, "user_knn": 0.0, "content": 0.0,
                   "popularity": 0.0}  # fmt: skip
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
BLEND_FILE = "hybrid.json"


class HybridParams(Params):
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS), description="Blend weight per component (registry names)."
    )
    component_params: dict[str, dict] = Field(default_factory=dict, description="Hyper-parameters per component.")
    tune: bool = Field(True, description="Choose the weights on validation carved from the training data.")
    tune_share: float = Field(0.2, gt=0, lt=1)
    tune_users: int = Field(2000, ge=10, description="Validation users sampled for the weight search.")
    tune_rounds: int = Field(2, ge=1)
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

    @classmethod
    def from_settings(cls, s: Settings) -> Hybrid:
        return cls(settings=s)

    # --- components ---------------------------------------------------------------------------
    def _make(self, name: str, seed: int) -> Recommender:
        model = registry.create(name, self.settings, self.params.component_params.get(name))
        if "seed" in type(model.params).model_fields:
            model = type(model)(model.params.model_copy(update={"seed": seed}))
        return model

    def _fit_components(self, data: Dataset, names: Sequence[str], spark: SparkSession | None) -> dict:
        out = {}
        for name in names:
            model = self._make(name, self.params.seed)
            model.fit(data, spark)
            out[name] = model
        return out

    @property
    def active(self) -> list[str]:
        return [name for name, w in self.weights.items() if w > 0]

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.n_items = data.n_items
        if self.params.tune:
            self.weights = self._tune(data, spark)
            log.info("hybrid weights chosen on validation: %s", self.weights)
        self.components = self._fit_components(data, self.active, spark)

    def _tune(self, data: Dataset, spark: SparkSession | None) -> dict[str, float]:
        from recsys.data.datasets import holdout
        from recsys.evaluation.metrics import per_user_metrics
        from recsys.models.topk import _select_top

        train, relevant = holdout(data, self.params.tune_share)
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
        if users.size > self.params.tune_users:
            users = np.sort(np.random.default_rng(self.params.seed).choice(users, self.params.tune_users, False))
        names = list(self.params.weights)
        models = self._fit_components(train, names, spark)
        contexts = train.contexts(users, max(m.recent_events for m in models.values()))
        blocks = {name: _unit_scale(np.array(m.score(contexts), dtype=np.float32)) for name, m in models.items()}
        exclude = train.strengths[users].toarray() > 0

        def ndcg(weights: dict[str, float]) -> float:
            total = sum(w * blocks[n] for n, w in weights.items() if w > 0)
            if isinstance(total, int):
                return 0.0
            total = np.where(exclude, -np.inf, total)
            top, _ = _select_top(total, 10)
            return float(per_user_metrics(top, relevant[users])["ndcg"].mean())

        weights = dict(self.params.weights)
        best = ndcg(weights)
        for _ in range(self.params.tune_rounds):
            for name in names:
                for value in GRID:
                    trial = {**weights, name: value}
                    if not any(v > 0 for v in trial.values()):
                        continue
                    score = ndcg(trial)
                    if score > best + 1e-6:
                        best, weights = score, trial
        self.validation_ndcg = best
        return weights

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
        parts = [p for p in parts if p is not None]
        return np.hstack(parts).astype(np.float32) if parts else None

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

    def score_all(self, users: Sequence[UserContext], new: NewItems) -> np.ndarray:
        """Scores over the model's items and the new ones, each component scaled by its best base-item score."""
        views = self._views(users)
        total = np.zeros((len(users), self.n_items + len(new)), np.float32)
        offset = 0
        for name, model in self.components.items():
            weight = self.weights.get(name, 0.0)
            size = model.state_size if model.stateful else 0
            if weight <= 0:
                offset += size
                continue
            base = np.array(model.score(views[name]), dtype=np.float32)
            scale = _row_max(base)
            total[:, : self.n_items] += weight * _finite(base) / scale[:, None]
            if len(new) and size:
                part = NewItems(new.ids, new.states[:, offset : offset + size])
                extra = np.array(model.score_new_items(views[name], part), dtype=np.float32)
                total[:, self.n_items :] += weight * _finite(extra) / scale[:, None]
            offset += size
        if len(new) and not self._stateful:
            total[:, self.n_items :] = -np.inf
        return total

    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Behavioural neighbours (item-CF, else ALS) when the item has any, else its attributes' neighbours."""
        for name in ("item_knn", "transitions", "implicit_als", "spark_als", "content"):
            model = self.components.get(name)
            if model is not None:
                idx, val = model.similar_items(item, k)
                if len(idx):
                    self._similar_from = model.similar_source(item)
                    return idx, val
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def bought_together(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        for model in self.components.values():
            idx, val = model.bought_together(item, k)
            if len(idx):
                return idx, val
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def similar_source(self, item: int) -> str:
        for name in ("item_knn", "transitions", "implicit_als", "spark_als"):
            model = self.components.get(name)
            if model is not None and len(model.similar_items(item, 1)[0]):
                return "batch"
        return "content" if "content" in self.components else "batch"

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The reasons of the component that contributes most to this item's blended score."""
        views = self._split_state(user)
        best, best_share = None, 0.0
        for name, model in self.components.items():
            weight = self.weights.get(name, 0.0)
            if weight <= 0:
                continue
            scores = np.array(model.score([views[name]])[0], dtype=np.float32)
            share = weight * float(_finite(scores)[item]) / float(_row_max(scores[None, :])[0])
            if share > best_share and name != "popularity":
                best, best_share = name, share
        return [] if best is None else self.components[best].explain(views[best], item, n)

    # --- files ------------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        files = {}
        for name, model in self.components.items():
            sub = directory / name
            sub.mkdir()
            files.update({f"{name}/{k}": f"{name}/{v}" for k, v in model.save(sub).items()})
        blend = {"weights": self.weights, "params": {n: m.params.model_dump() for n, m in self.components.items()}}
        (directory / BLEND_FILE).write_text(json.dumps(blend, indent=2, sort_keys=True))
        files["blend"] = BLEND_FILE
        return files

    @classmethod
    def load(cls, directory: Path, params: Params, data: Dataset) -> Hybrid:
        model = cls(params)  # type: ignore[arg-type]
        blend = json.loads((directory / BLEND_FILE).read_text())
        model.weights = blend["weights"]
        for name, component_params in blend["params"].items():
            component_cls = registry.model_class(name)
            model.components[name] = component_cls.load(directory / name,
                                                         component_cls.Params.model_validate(component_params), data)
        model.n_items = data.n_items
        return model

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:
        for name in json.loads((directory / BLEND_FILE).read_text())["params"]:
            registry.model_class(name).erase_rows(directory / name, rows)

    def describe(self) -> dict[str, object]:
        return {"weights": self.weights, "validation_ndcg@10": getattr(self, "validation_ndcg", None),
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
        states = [s for s in states if s is not None]
        return np.hstack(states).astype(np.float32) if states else None

    def new_items(self, positions: Sequence[int], touched_by: Sequence[dict[str, float]]) -> np.ndarray | None:
        states = [r.new_items(positions, touched_by) for _, r in self.parts]
        if not states or any(s is None for s in states):
            return None
        return np.hstack(states).astype(np.float32)  # type: ignore[arg-type]

    def forget(self, key: str) -> None:
        for _, r in self.parts:
            r.forget(key)

    def state(self, key: str) -> np.ndarray | None:
        states = [r.state(key) for _, r in self.parts]
        if not states or any(s is None for s in states):
            return None
        return np.hstack(states).astype(np.float32)  # type: ignore[arg-type]


def _finite(scores: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(scores), scores, 0.0).astype(np.float32)


def _row_max(scores: np.ndarray) -> np.ndarray:
    """Each row's largest finite score, 1 where nothing is positive (then the component adds nothing above 0)."""
    top = np.max(_finite(scores), axis=1) if scores.shape[1] else np.zeros(scores.shape[0], np.float32)
    return np.where(top > 0, top, 1.0).astype(np.float32)


def _unit_scale(scores: np.ndarray) -> np.ndarray:
    return _finite(scores) / _row_max(scores)[:, None]

