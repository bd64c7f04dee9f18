"""What some recommenders can do beyond the contract, as protocols the layers check for.

The contract (`recsys.models.base.Recommender`) is what every model does: fit, score,
rank, similar items, explain, save and load. Three abilities only some models have, and
the layer that needs one asks `isinstance(model, Protocol)` rather than `hasattr`:

- `Updating`: a per-user real-time state the speed layer computes (ALS: the exact fold-in;
  NeuMF: a re-optimised embedding; the hybrid: its updating components' states end to end).
  A model without it reads the user's history at request time and keeps no state.
- `Factors`: item factors, user vectors and the exact norm index over their inner products
  (ALS). Serving builds its approximate index from them; the hybrid ranks them by the index;
  items newer than the model are scored by them (`new_item_scores`).
- `SparseScores`: the scores as a sparse matrix, an unstored item scoring exactly 0 (the
  item-to-item family, session-KNN): the hybrid's candidates are the stored entries.
- `BoughtTogether`: items carted or bought in the same sessions (transitions); `MixedSimilar`:
  similar items from attributes for some items (content; the hybrid for items nobody touched).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard, cast, runtime_checkable

import numpy as np
import scipy.sparse as sp

from recsys.data.inputs import Dataset, NewItems, UserContext

if TYPE_CHECKING:
    from recsys.models.base import Realtime, Recommender
    from recsys.models.norm_index import NormIndex


@runtime_checkable
class Updating(Protocol):
    """A model whose users have a real-time state (a vector of `state_size` floats)."""

    @property
    def state_size(self) -> int: ...

    def update_users(self, users: Sequence[UserContext]) -> np.ndarray | None:
        """The state of each user from their history as it is now (one row per user)."""
        ...

    def realtime(self, data: Dataset) -> Realtime:
        """What the speed layer holds for this model between micro-batches (see `base.Realtime`)."""
        ...


@runtime_checkable
class Factors(Protocol):
    """A factor model: score(u, j) = user_vectors(u) · item_factors[j]."""

    item_factors: np.ndarray

    @property
    def norm_index(self) -> NormIndex: ...

    def user_vectors(self, users: Sequence[UserContext]) -> np.ndarray: ...


@runtime_checkable
class SparseScores(Protocol):
    """A model whose scores are sparse: items outside the stored entries score exactly 0."""

    def sparse_scores(self, users: Sequence[UserContext]) -> sp.csr_matrix:
        """(users × items) with sorted rows; the same values `score` has where stored."""
        ...


SimilarSource = Literal["batch", "content"]


@runtime_checkable
class BoughtTogether(Protocol):
    def bought_together(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items most often carted or bought with `item` in one session, and how often."""
        ...


@runtime_checkable
class MixedSimilar(Protocol):
    def similar_source(self, item: int) -> SimilarSource:
        """What `similar_items` answers from for this item: "batch" (behaviour) or "content" (attributes)."""
        ...


_KNOWN: dict[tuple[type, Any], bool] = {}


def _has(model: object, protocol: Any) -> bool:
    """`isinstance(model, protocol)`, remembered per class: every instance of a recommender class has the same
    abilities (its attributes are set in `__init__`), and a runtime protocol check costs 4-10 µs, which the
    hybrid would pay per component and per user on every request."""
    key = (type(model), protocol)
    if key not in _KNOWN:
        _KNOWN[key] = isinstance(model, protocol)
    return _KNOWN[key]


def updates_users(model: object) -> TypeGuard[Updating]:
    return _has(model, Updating)


def mirrors_champion(challenger: object, own_offsets: dict[int, int], champion_offsets: dict[int, int]) -> bool:
    """Whether an A/B test's challenger takes the champion's user UPs, without their vector, as its own: it keeps
    no real-time state and its data ends at the champion's `events` offsets, so what each user did since its cut-off
    is what they did since the champion's. Then the speed layer keeps no state for it and serving mirrors the
    champion's UPs to it; otherwise the speed layer gives it a state and UPs of its own (one rule for both)."""
    return not updates_users(challenger) and own_offsets == champion_offsets


def has_factors(model: object) -> TypeGuard[Factors]:
    return _has(model, Factors)


def scores_sparsely(model: object) -> TypeGuard[SparseScores]:
    return _has(model, SparseScores)


def bought_together(model: Recommender, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`model.bought_together` where the model can say; empty otherwise."""
    if _has(model, BoughtTogether):
        return cast(BoughtTogether, model).bought_together(item, k)
    return np.zeros(0, np.int64), np.zeros(0, np.float32)


def similar_source(model: Recommender, item: int) -> SimilarSource:
    """Where `model.similar_items(item)` comes from: behaviour ("batch") unless the model says otherwise."""
    return cast(MixedSimilar, model).similar_source(item) if _has(model, MixedSimilar) else "batch"


def state_size(model: Recommender) -> int:
    """Length of a user's real-time state; 0 for a model that keeps none."""
    return model.state_size if updates_users(model) else 0


def new_item_scores(model: Recommender, users: Sequence[UserContext], new: NewItems) -> np.ndarray:
    """(users × new items): a factor model's inner products with the new items' folded-in vectors; -inf for
    any other model (it cannot rank an item it has never seen)."""
    if not len(new):
        return np.zeros((len(users), 0), np.float32)
    if has_factors(model):
        return (model.user_vectors(users) @ new.states.T.astype(np.float32)).astype(np.float32)
    return np.full((len(users), len(new)), -np.inf, np.float32)


def with_new_items(
    model: Recommender, users: Sequence[UserContext], scores: np.ndarray, new: NewItems | None
) -> np.ndarray:
    """`scores` over the model's items, followed by the new items' columns (none when there are none)."""
    scores = np.asarray(scores, dtype=np.float32)
    if new is None or not len(new):
        return scores
    return np.hstack([scores, new_item_scores(model, users, new)])
