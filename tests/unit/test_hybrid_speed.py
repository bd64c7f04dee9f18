"""The hybrid's faster request path gives the same answers: on MovieLens-100K users, the same top-10 and the same
scores as the code it replaced (recency profiles through scipy's COO route, the priors read item by item, the
candidates by one argpartition), for batches and for single users (serving)."""

import numpy as np
import pytest

from recsys.data.inputs import NewItems, UserContext
from recsys.data.movielens import attributes
from recsys.evaluation.protocol import load_ml100k_events, make_split
from recsys.models import content, item_to_item, session_knn, sparse
from recsys.models.hybrid import Hybrid, HybridParams
from recsys.models.hybrid import model as hybrid_model
from recsys.models.hybrid.reranker import _Counts
from recsys.settings import Settings
from recsys.topk import select_top

COMPONENT_MODULES = (content, item_to_item, session_knn)


def shares_item_by_item(self, items, lo, hi):
    """`_Counts.shares` as it was: user by user, one searchsorted pair per item inside its column."""
    return np.stack([_shares_of_one(self, row, a, b) for row, a, b in zip(items, lo, hi, strict=True)])


def _shares_of_one(self, items, lo, hi):
    n_rows = self.matrix.shape[0]
    lo, hi = int(np.clip(lo, 0, n_rows)), int(np.clip(hi, 0, n_rows))
    total = self._rows[hi] - self._rows[lo]
    if total <= 0:
        return np.zeros(len(items))
    ptr, idx = self.matrix.indptr, self.matrix.indices
    start, end = ptr[items], ptr[items + 1]
    out = np.empty(len(items))
    for k in range(len(items)):
        column = idx[start[k] : end[k]]
        a, b = start[k] + np.searchsorted(column, lo), start[k] + np.searchsorted(column, hi)
        out[k] = self._data[b] - self._data[a]
    return out / total


def candidate_features_as_before(norm, priors, users, stage1, seen, n_candidates, components):
    """`candidate_features` as it was: the candidates chosen by one argpartition over the whole block."""
    s = np.where(seen, -np.inf, stage1)
    cand, _ = select_top(s, n_candidates)
    cand = np.where(cand < 0, 0, cand)
    comp = np.stack(
        [np.take_along_axis(norm[c], cand, 1) if c in norm else np.zeros(cand.shape) for c in components], axis=-1
    )
    rank = np.log1p(np.broadcast_to(np.arange(cand.shape[1], dtype=np.float64), cand.shape))[..., None]
    loglen = np.log1p(np.array([len(u.items) for u in users], np.float64))[:, None, None] * np.ones((*cand.shape, 1))
    feats = np.concatenate([comp, priors.shares(users, cand), rank, comp * loglen, loglen], axis=-1)
    return cand, feats


@pytest.fixture(scope="module")
def fitted():
    s = Settings()
    split = make_split(load_ml100k_events(), test_share=0.2, event_types=list(s.event_weights), items=attributes())
    model = Hybrid(HybridParams(tune_users=200, tune_rounds=1, rerank="always"), settings=s)
    model.fit(split.train)
    return model, split.train


def top10(model: Hybrid, users: list[UserContext]) -> tuple[np.ndarray, np.ndarray]:
    scores = model.score(users, NewItems())
    for r, ctx in enumerate(users):
        scores[r, ctx.items] = -np.inf  # what serving leaves out by default is a subset of these; any mask will do
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return order, np.take_along_axis(scores, order, 1)


def test_recency_profiles_are_the_same_matrices(fitted):
    _, data = fitted
    users = [data.context(r, 60) for r in range(data.n_users)]
    kinds = np.array([1.0, 3.0, 5.0])
    for args in ((50, 0.93, None, 1000), (10, 0.75, kinds, 1000), (20, 0.9, None, 0), (3, 0.5, kinds, 0)):
        for i in range(0, len(users), 7):
            new = sparse.recent_weights(users[i : i + 7], data.n_items, *args)
            old = sparse._recent_weights_coo(users[i : i + 7], data.n_items, *args)
            assert new.dtype == old.dtype and new.indices.dtype == old.indices.dtype
            np.testing.assert_array_equal(new.indptr, old.indptr)
            np.testing.assert_array_equal(new.indices, old.indices)
            np.testing.assert_array_equal(new.data, old.data)


def test_the_hybrid_answers_as_before_on_movielens_users(fitted, monkeypatch):
    model, data = fitted
    assert model.reranker is not None and model.priors is not None  # both stages are exercised
    users = [data.context(r, model.recent_events) for r in range(0, data.n_users, 3)]
    batches = [users[i : i + 16] for i in range(0, len(users), 16)] + [[u] for u in users[:60]]  # serving: 1 user
    now = [top10(model, batch) for batch in batches]
    with monkeypatch.context() as patch:
        for module in COMPONENT_MODULES:
            patch.setattr(module, "recent_weights", sparse._recent_weights_coo)
        patch.setattr(_Counts, "shares", shares_item_by_item)
        patch.setattr(hybrid_model, "candidate_features", candidate_features_as_before)
        before = [top10(model, batch) for batch in batches]
    for (idx, val), (idx0, val0) in zip(now, before, strict=True):
        np.testing.assert_array_equal(idx, idx0)
        np.testing.assert_array_equal(val, val0)


def test_the_priors_shares_of_a_batch_are_each_users_own(fitted):
    """Per user its own row range (history length, latest hour): the batch's one search equals user by user."""
    model, data = fitted
    counts = model.priors.position
    rng = np.random.default_rng(0)
    items = rng.integers(0, data.n_items, size=(12, 30))
    lo = rng.integers(-40, counts.matrix.shape[0], size=12)
    hi = lo + rng.integers(0, 60, size=12)
    lo[0], hi[0] = 5, 5  # an empty range: no counts, shares 0
    got = counts.shares(items, lo, hi)
    assert (got > 0).any(axis=1)[1:].sum() >= 6  # the ranges hold counts: the comparison says something
    np.testing.assert_array_equal(got, shares_item_by_item(counts, items, lo, hi))
