"""The optional abilities each registered recommender has, as the layers that check for them see them."""

from __future__ import annotations

import numpy as np
import pytest

from recsys import registry
from recsys.data.inputs import NewItems, UserContext
from recsys.models.als import ImplicitALS
from recsys.models.base import Realtime, realtime_of
from recsys.models.capabilities import (
    BoughtTogether,
    Factors,
    MixedSimilar,
    SparseScores,
    Updating,
    has_factors,
    new_item_scores,
    scores_sparsely,
    state_size,
    updates_users,
)
from recsys.models.item_knn import ItemKNN
from recsys.models.popularity import Popularity

# What docs/recommenders.md says each model can do beyond the contract.
ABILITIES = {
    "popularity": set(),
    "spark_als": {Updating, Factors},
    "implicit_als": {Updating, Factors},
    "item_knn": {SparseScores},
    "transitions": {SparseScores, BoughtTogether},
    "transitions_last": {SparseScores, BoughtTogether},
    "ease": {SparseScores},
    "slit": {SparseScores},
    "session_knn": {SparseScores},
    "user_knn": set(),
    "user_knn_pearson": set(),
    "content": {MixedSimilar},
    "neumf": {Updating},
    "srgnn": set(),
    "hybrid": {Updating, BoughtTogether, MixedSimilar},
}
PROTOCOLS = (Updating, Factors, SparseScores, BoughtTogether, MixedSimilar)


@pytest.mark.parametrize("name", registry.names())
def test_each_model_has_the_abilities_the_docs_give_it(name):
    model = registry.model_class(name)()
    assert {p for p in PROTOCOLS if isinstance(model, p)} == ABILITIES[name]
    assert updates_users(model) == (Updating in ABILITIES[name])  # the remembered check agrees
    assert has_factors(model) == (Factors in ABILITIES[name])
    assert scores_sparsely(model) == (SparseScores in ABILITIES[name])


def test_a_model_without_a_state_gets_the_history_only_real_time_side():
    model = ItemKNN()
    side = realtime_of(model, None)  # type: ignore[arg-type]  # the plain holder never reads the data
    assert type(side) is Realtime and side.users(["u"], [UserContext()]) is None
    assert state_size(model) == 0


def test_only_factor_models_rank_new_items():
    users = [UserContext()]
    new = NewItems(("n1", "n2"), np.ones((2, 4), np.float32))
    popularity = Popularity()
    popularity.n_items, popularity.counts = 3, np.array([3.0, 2.0, 1.0], np.float32)
    scores = popularity.score(users, new)
    assert scores.shape == (1, 5) and np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[0, :3]).all()
    assert np.isneginf(new_item_scores(popularity, users, new)).all()


def test_a_factor_model_scores_new_items_by_their_folded_in_vectors():
    als = ImplicitALS()
    rng = np.random.default_rng(0)
    als.item_factors = rng.normal(size=(5, als.params.rank)).astype(np.float32)
    als.n_items = 5
    user = UserContext(state=rng.normal(size=als.params.rank).astype(np.float32))
    new = NewItems(("n1",), rng.normal(size=(1, als.params.rank)).astype(np.float32))
    scores = als.score([user], new)
    assert scores.shape == (1, 6)
    np.testing.assert_allclose(scores[0, 5], new.states[0] @ user.state, rtol=1e-5)
    np.testing.assert_allclose(scores[0, :5], als.item_factors @ user.state, rtol=1e-5)
