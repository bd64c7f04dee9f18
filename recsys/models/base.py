"""The recommender contract: what every algorithm does, in one small class.

Like the `implicit` library's model classes, a recommender is one object that can

1. **fit** from a `Dataset` (the silver snapshot as arrays), on Spark or in one process;
2. **score** a batch of users, each given as a `UserContext`, over its items (and over
   items newer than the model, `NewItems`, where it can rank them);
3. **rank**: `recommend_many`, the top k per user after exclusions and a filter (by
   default a selection from `score`; ALS and the hybrid override it with an exact faster
   way, and serving only ever calls this);
4. give **similar items** and an **explanation** in terms of the user's own events;
5. **save / load** its own files in the model directory (the shared parts of the
   artifact, the `Dataset`, are saved by `recsys.io.model_store`).

What only some models can do (a real-time per-user state, factors, sparse scores) are the
protocols of `recsys.models.capabilities`, which the speed layer, serving and the hybrid
check for. A new algorithm is one file plus one line in `recsys.registry`.

Item positions: every model scores the items of the `Dataset` it was fitted on
(`n_items`, catalogue items without interactions included), then the new items (folded
in by the speed layer) in the order given. Scores are float32, higher is better; -inf
means "this model cannot rank that item".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.models.capabilities import updates_users
from recsys.topk import PAD, top_k_of_scores

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.settings import Settings


class Params(BaseModel):
    """A model's hyper-parameters: typed, validated, and written to the manifest as they are."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Inside a Recommender's body `Params` names that class's own ClassVar, which is not a type: annotations there use this.
AnyParams: TypeAlias = Params


@dataclass(frozen=True)
class Reason:
    """One of the user's events that explains a recommendation, and how much of its score it carries."""

    item: int
    share: float


# --- the interface ---------------------------------------------------------------------------------
class Recommender(ABC):
    """Base class of every algorithm. Subclasses set `name` and `Params`, and implement `fit` and `score`."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    # How many of a user's latest events request-time scoring reads (the artifact and UPs keep this many).
    recent_events: ClassVar[int] = 50
    # Whether `explain`'s shares of all the user's items sum to the score of their current (updated) view.
    additive_explanations: ClassVar[bool] = False

    def __init__(self, params: AnyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.n_items = 0

    @classmethod
    def from_settings(cls, s: Settings) -> Recommender:
        """The model with the hyper-parameters the settings ask for (default: the Params defaults)."""
        return cls()

    def describe(self) -> dict[str, object]:
        """Facts for the manifest beyond the hyper-parameters (ALS: the objective it minimised)."""
        return {}

    # 1. batch fit -------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        """Learn from the whole dataset. Sets `n_items`."""

    # 2. score ------------------------------------------------------------------------------------
    @abstractmethod
    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        """(len(users), n_items + len(new)) float32 scores: the model's items, then the new ones (-inf where the
        model cannot rank them: `capabilities.with_new_items` appends those columns)."""

    # 3. rank -------------------------------------------------------------------------------------
    def recommend_many(
        self,
        users: Sequence[UserContext],
        k: int,
        exclude: Sequence[np.ndarray | None],
        allowed: Sequence[np.ndarray | None],
        new: NewItems | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per user the k best item positions (new items after the model's) and their scores, best first.

        `exclude[r]` are positions never to return to user r; `allowed[r]` a boolean mask over all positions (a
        business filter), or None. Items the model cannot rank (-inf) are left out, so fewer than k may come back.
        The default scores everything with one `score` and selects per user; a model with a faster exact way
        (ALS: `recsys.models.norm_index`; the hybrid: `hybrid/candidates.py`) overrides it.
        """
        if not len(users):
            return []
        scores = self.score(users, new)
        return [select(scores[r], k, exclude[r], allowed[r]) for r in range(len(users))]

    # 4. similar items and explanations ---------------------------------------------------------------
    def similar_items(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items most like `item` (itself excluded); empty if the model has no notion of it."""
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def explain(self, user: UserContext, item: int, n: int = 3) -> list[Reason]:
        """The user's own items that most explain `item`'s score, largest share first."""
        return []

    # 5. save / load ------------------------------------------------------------------------------
    @abstractmethod
    def save(self, directory: Path) -> dict[str, str]:
        """Write the model's own files into `directory`; returns logical name -> file name."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> Recommender:
        """Read a fitted model back (factors may be memory-mapped); `data` is the artifact's shared part."""

    @classmethod
    def erase_rows(cls, directory: Path, rows: np.ndarray) -> None:
        """Erase what the model's own files hold of these user rows (right to erasure), each file atomically."""
        return None  # models without per-user files hold nothing more than the shared data


def realtime_of(model: Recommender, data: Dataset) -> Realtime:
    """The speed layer's holder for `model`: the model's own if it updates users, else the history-only one."""
    return model.realtime(data) if updates_users(model) else Realtime(model)


class Realtime:
    """A model's real-time side inside the speed layer, for one batch model.

    The speed layer keeps every touched user's history (training row plus events since
    the cut-off) and calls `users` with it; models with per-user state compute it here.
    `new_items` folds in items the model has never seen, given who touched them
    (ALS does; others return None). State that must persist between micro-batches (ALS's
    growing factor tables) lives in a subclass.
    """

    # Whether `users` reads a context's latest events (`UserContext.recent*`), or only its items and strengths:
    # the speed layer leaves the events out of the contexts it builds for a model that reads none.
    reads_recent_events: ClassVar[bool] = True

    def __init__(self, model: Recommender) -> None:
        self.model = model

    def users(self, keys: Sequence[str], contexts: Sequence[UserContext]) -> np.ndarray | None:
        return self.model.update_users(contexts) if updates_users(self.model) else None

    def new_items(self, positions: Sequence[int], touched_by: Sequence[dict[str, float]]) -> np.ndarray | None:
        return None

    def forget(self, key: str) -> None:
        """Drop whatever is held for a user (right to erasure)."""

    def state(self, key: str) -> np.ndarray | None:
        """The user's current state (last computed, else the model's), None if the model keeps none for them."""
        return None

    @property
    def n_items(self) -> int:
        """Item positions the model can use in a history (the model's items plus new items with a state)."""
        return self.model.n_items


def select(
    scores: np.ndarray, k: int, exclude: np.ndarray | None = None, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one score vector after exclusions and a filter; -inf entries never come back."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None and len(exclude):
        scores[exclude[exclude < len(scores)]] = -np.inf
    if allowed is not None:
        scores[~allowed[: len(scores)]] = -np.inf
    idx, val = top_k_of_scores(scores, k)
    keep = idx != PAD
    return idx[keep], val[keep]


def recency_weights(n: int, decay: float) -> np.ndarray:
    """Weights of a user's last n events, oldest first: decay ** (events since), the newest weighs 1."""
    return (decay ** np.arange(n - 1, -1, -1, dtype=np.float64)).astype(np.float32)
