"""Two-stage serving gives the dense definition's answers: on MovieLens-100K users, the hybrid's top 10 from
candidates (`recsys.models.hybrid.candidates`) equals the top 10 of `score` over every item (with the factor
and content models read densely or through their indexes), with and
without the re-ranker, under exclusions, filters (wide and narrow), new items, and at a depth so small that
nearly every user must be deepened before the answer is certified."""

import numpy as np
import pytest

from recsys.data.inputs import NewItems, UserContext
from recsys.data.movielens import attributes
from recsys.evaluation.protocol import load_ml100k_events, make_split
from recsys.models.hybrid import Hybrid, HybridParams, candidates
from recsys.settings import Settings


@pytest.fixture(autouse=True)
def two_stage(monkeypatch):
    """These tests are about the two-stage path: on MovieLens-100K serving would answer from the dense scores."""
    monkeypatch.setattr(candidates, "TWO_STAGE_FROM", 0)


@pytest.fixture(scope="module")
def split():
    s = Settings()
    return s, make_split(load_ml100k_events(), test_share=0.2, event_types=list(s.event_weights), items=attributes())


@pytest.fixture(scope="module", params=["always", "never", "factor-led"])
def fitted(request, split):
    s, data = split
    if request.param == "factor-led":  # the factor model carries the list: its candidates must be found
        params = HybridParams(tune=False, rerank="never", weights={"implicit_als": 1.0, "slit": 0.2, "content": 0.1})
    else:
        params = HybridParams(tune_users=200, tune_rounds=1, rerank=request.param)
    model = Hybrid(params, settings=s)
    model.fit(data.train)
    assert (model.reranker is not None) == (request.param == "always")
    return model, data.train


def dense_answers(model, users, k, exclude, allowed, new):
    """The definition, as serving answers catalogues below `TWO_STAGE_FROM` items."""
    return candidates.dense_top(model, users, k, exclude, allowed, new)


def same_share(model, users, k=10, exclude=None, allowed=None, new=None, batch=32):
    """Share of users whose two-stage top k (items, in order) equals the dense one; scores must agree closely."""
    new = new if new is not None else NewItems()
    exclude = exclude if exclude is not None else [u.items for u in users]
    allowed = allowed if allowed is not None else [None] * len(users)
    same = 0
    for lo in range(0, len(users), batch):
        sl = slice(lo, lo + batch)
        want = dense_answers(model, users[sl], k, exclude[sl], allowed[sl], new)
        got = model.recommend_many(users[sl], k, exclude[sl], allowed[sl], new)
        for (wi, wv), (gi, gv) in zip(want, got, strict=True):
            assert len(gi) == len(wi)
            np.testing.assert_allclose(gv, wv, rtol=1e-4, atol=1e-6)  # the same values, to float32 rounding
            same += np.array_equal(wi, gi)
    return same / len(users)


def test_the_same_top_10_as_the_dense_scores(fitted):
    model, data = fitted
    users = [data.context(r, model.recent_events) for r in range(data.n_users)]
    assert same_share(model, users) >= 0.99


def test_the_same_top_10_with_the_factor_and_content_models_read_through_their_indexes(fitted, monkeypatch):
    model, data = fitted
    monkeypatch.setattr(candidates, "INDEX_FROM", 0)  # what catalogues of 20k items and more use
    users = [data.context(r, model.recent_events) for r in range(0, data.n_users, 2)]
    assert same_share(model, users) >= 0.99
    assert same_share(model, users, exclude=[u.items[::3] for u in users]) >= 0.99


def test_a_norm_index_list_shorter_than_the_pool_still_bounds_the_answer(fitted, monkeypatch):
    """The factor model's list is `FACTOR_SHARE` times shorter than the pool: it is complete (exhaustive) only when
    shorter than its own depth, and its last score bounds what it left out; deepening lengthens it."""
    model, data = fitted
    monkeypatch.setattr(candidates, "INDEX_FROM", 0)
    monkeypatch.setattr(candidates, "FACTOR_SHARE", 40)  # ALS's first list: 1 item, the others' 40
    # Pools small against MovieLens' 1,682 items, so that ALS's best items are missing unless B makes them deepen.
    monkeypatch.setattr(model, "params", model.params.model_copy(update={"serve_depth": 40}))
    users = [data.context(r, model.recent_events) for r in range(0, data.n_users, 5)]
    assert same_share(model, users) >= 0.99


def test_a_depth_of_one_is_deepened_until_certified_with_the_same_answers(fitted, monkeypatch):
    model, data = fitted
    depths = []
    gather = candidates.gather

    def counted(m, scored, rows, depth, *args):
        depths.append(depth)
        return gather(m, scored, rows, depth, *args)

    monkeypatch.setattr(candidates, "gather", counted)
    monkeypatch.setattr(model, "params", model.params.model_copy(update={"serve_depth": 1}))
    users = [data.context(r, model.recent_events) for r in range(0, data.n_users, 5)]
    assert same_share(model, users) >= 0.99
    assert max(depths) > 10  # the first depth did not certify (the answer needs more than one item per source)


def test_filters_exclusions_and_new_items_give_the_same_answers(fitted):
    model, data = fitted
    rng = np.random.default_rng(3)
    users = [data.context(r, model.recent_events) for r in range(0, data.n_users, 4)]
    new = NewItems(("new-a", "new-b"), rng.normal(size=(2, model.state_size)).astype(np.float32))
    n_all = model.n_items + len(new)
    wide = [rng.random(n_all) < 0.3 for _ in users]
    narrow = [rng.random(n_all) < 0.01 for _ in users]
    extra = [np.concatenate([u.items, rng.choice(n_all, 20)]) for u in users]  # the caller's exclusions too
    assert same_share(model, users, allowed=wide, new=new) >= 0.99
    assert same_share(model, users, allowed=narrow, exclude=extra, new=new) >= 0.99
    assert same_share(model, users, exclude=[np.zeros(0, np.int64)] * len(users)) >= 0.99  # seen items allowed
    assert same_share(model, users, exclude=[u.items[::3] for u in users]) >= 0.99  # serving's: some seen items


def test_a_user_nothing_scores_gets_the_popular_items(fitted):
    model, _ = fitted
    ((idx, _),) = model.recommend_many([UserContext()], 10, [None], [None])
    popular = np.argsort(-model.popularity, kind="stable")
    if model.reranker is None:
        np.testing.assert_array_equal(idx, popular[:10])
    else:  # the re-ranker reorders the blend's (here: popularity's) top candidates
        assert len(idx) == 10 and np.isin(idx, popular[: model.reranker.n_candidates]).all()
