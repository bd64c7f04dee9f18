"""The session-aware families on tiny data: recency by tie window, transitions, EASE, SLIT, session-KNN, the hybrid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as hs

from recsys import registry
from recsys.data.inputs import UserContext
from recsys.evaluation.protocol import dataset_from_events
from recsys.models import ease
from recsys.models.ease import EASE, EaseParams, ridge_inverse
from recsys.models.hybrid import Hybrid, HybridParams
from recsys.models.hybrid.reranker import Priors, choose_reranker
from recsys.models.session_knn import SessionKNN
from recsys.models.slit import SLIT, SlitParams, training_rows
from recsys.models.sparse import _recent_weights_coo, event_ages, recent_weights
from recsys.models.transitions import Transitions, TransitionsLast, TransitionsParams

S = 1000  # ms


def events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """(user, item, ts in ms) -> the protocol's event frame (every event a view of weight 1)."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": [r[2] for r in rows],
            "weight": 1.0,
            "event_type": "view",
        }
    )


def ctx(items: list[int], ts: list[int], row: int | None = None) -> UserContext:
    a = np.array(items, np.int64)
    return UserContext(
        row=row,
        items=np.unique(a),
        strengths=np.ones(len(np.unique(a)), np.float32),
        recent=a,
        recent_ts_ms=np.array(ts, np.int64),
        recent_kinds=np.zeros(len(a), np.int8),
    )


# --- recency by time ---------------------------------------------------------------------------------
def test_events_in_one_tie_window_share_an_age():
    ages = event_ages(np.array([0, 1 * S, 1 * S + 400, 3 * S]), 4, tie_ms=S)
    assert ages.tolist() == [2.0, 1.0, 1.0, 0.0]  # the two events in second 1 weigh the same
    assert event_ages(np.array([0, 1 * S, 1 * S + 400, 3 * S]), 4, tie_ms=0).tolist() == [3.0, 2.0, 1.0, 0.0]


def test_recent_weights_by_tie_window():
    w = recent_weights([ctx([0, 1, 2], [0, 5 * S, 5 * S])], 3, last=10, decay=0.5, tie_ms=S).toarray()[0]
    assert w.tolist() == [0.5, 1.0, 1.0]
    w = recent_weights([ctx([0, 1, 2], [0, 5 * S, 5 * S])], 3, last=10, decay=0.5).toarray()[0]
    assert w.tolist() == [0.25, 0.5, 1.0]  # by row, as before


# --- transitions --------------------------------------------------------------------------------------
def test_transitions_count_backward_and_ties_both_ways():
    # A then B a second later; C and D in one second (their order in the data is only the item id).
    data, _ = dataset_from_events(events([("u", "A", 0), ("u", "B", S), ("v", "C", 0), ("v", "D", 0)]))
    a, b, c, d = (list(data.item_ids).index(x) for x in "ABCD")
    model = Transitions(TransitionsParams(norm=0.0, backward=0.5))
    model.fit(data)
    t = model.matrix.toarray()
    assert t[a, b] == pytest.approx(1.0) and t[b, a] == pytest.approx(0.5)  # backward weight
    assert t[c, d] == pytest.approx(0.75) and t[d, c] == pytest.approx(0.75)  # a tie: (1 + 0.5) / 2 both ways


def test_transitions_distance_counts_windows_with_decay():
    data, _ = dataset_from_events(events([("u", "A", 0), ("u", "B", S), ("u", "B2", S), ("u", "C", 2 * S)]))
    a, c = list(data.item_ids).index("A"), list(data.item_ids).index("C")
    model = Transitions(TransitionsParams(norm=0.0, backward=0.0, step_decay=0.6))
    model.fit(data)
    assert model.matrix[a, c] == pytest.approx(0.6)  # two windows on, whatever the events in between


def test_transitions_last_shares_the_matrix_and_queries_the_last_window():
    data, _ = dataset_from_events(events([("u", "A", 0), ("u", "B", S), ("w", "B", 0), ("w", "C", S)]))
    full, last = Transitions(), TransitionsLast()
    full.fit(data)
    last.share_fit(full)
    assert last.params.last == 5 and last.params.decay == 0.3 and last.fit_key() == full.fit_key()
    assert last.matrix is full.matrix
    assert registry.model_class("transitions_last") is TransitionsLast


# --- EASE ---------------------------------------------------------------------------------------------
def test_ease_is_the_closed_form_with_a_zero_diagonal():
    rows = [
        ("u1", "A", 0),
        ("u1", "B", S),
        ("u2", "A", 0),
        ("u2", "B", S),
        ("u2", "C", 2 * S),
        ("u3", "B", 0),
        ("u3", "C", S),
        ("u4", "A", 0),
    ]
    data, _ = dataset_from_events(events(rows))
    lam = 0.5
    model = EASE(EaseParams(lam=lam, neighbours=10))
    model.fit(data)
    x = (data.strengths.toarray() > 0).astype(float)
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    expected = -p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    got = model.matrix.toarray()
    assert np.diag(got).tolist() == [0.0, 0.0, 0.0]
    assert np.allclose(got, expected, atol=1e-6)
    assert (expected < 0).any()  # negative weights are kept (pruning is by magnitude)
    pruned = EASE(EaseParams(lam=lam, neighbours=1))
    pruned.fit(data)
    assert (pruned.matrix.getnnz(axis=1) <= 1).all()


def _random_views(n_users: int, n_items: int, per_user: int, seed: int) -> pd.DataFrame:
    """Each user views `per_user` distinct items, popular ones more often, one a second (ties: none)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for u in range(n_users):
        picked = rng.choice(n_items, per_user, replace=False, p=popularity / popularity.sum())
        rows += [(f"u{u:03d}", f"i{i:03d}", t * S) for t, i in enumerate(picked)]
    return events(rows)


def _top_sets(b: np.ndarray, k: int) -> list[set[int]]:
    return [set(np.argsort(-np.abs(row), kind="stable")[:k].tolist()) for row in b]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_ridge_inverse_is_the_inverse_made_in_the_grams_memory(monkeypatch, dtype, tol):
    monkeypatch.setattr(ease, "PRUNE_CHUNK", 7)  # several bands and a ragged last one in the mirror
    a = np.random.default_rng(0).integers(0, 2, size=(80, 30)).astype(np.float64)
    lam = 3.0
    expected = np.linalg.inv(a.T @ a + lam * np.eye(30))
    gram = (a.T @ a).astype(dtype)
    got = ridge_inverse(gram, lam)
    assert np.shares_memory(got, gram) and got.dtype == dtype  # no n² copy
    assert (got == got.T).all()
    assert np.abs(got - expected).max() <= tol * np.abs(expected).max()


def test_ease_equals_the_float64_textbook_formula_and_keeps_its_top_neighbours():
    """B = I − P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, diag(B) = 0, on 300 users × 60 items, to 1e-5 of max |B|."""
    data, _ = dataset_from_events(_random_views(300, 60, 8, seed=1))
    x = (data.strengths.toarray() > 0).astype(np.float64)
    lam = 20.0  # smaller than the default: a worse-conditioned G than the model's own
    p = np.linalg.inv(x.T @ x + lam * np.eye(data.n_items))
    expected = np.eye(data.n_items) - p / np.diag(p)[None, :]
    assert np.abs(np.diag(expected)).max() < 1e-12
    full = EASE(EaseParams(lam=lam, neighbours=data.n_items))
    full.fit(data)
    got = full.matrix.toarray()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert (np.diag(got) == 0).all()
    pruned = EASE(EaseParams(lam=lam, neighbours=10))
    pruned.fit(data)
    assert [set(row.indices.tolist()) for row in pruned.matrix] == _top_sets(expected, 10)


def test_ease_guard_gives_no_weights_beyond_max_items():
    rows = [(f"u{k}", "A", 0) for k in range(3)] + [(f"u{k}", "B", S) for k in range(2)] + [("u0", "C", 2 * S)]
    data, _ = dataset_from_events(events(rows))
    model = EASE(EaseParams(lam=0.1, max_items=2))
    model.fit(data)
    c = list(data.item_ids).index("C")
    assert model.matrix[c].nnz == 0 and model.matrix[:, c].nnz == 0
    assert model.score([ctx([0], [0])]).shape == (1, 3)


# --- SLIT ----------------------------------------------------------------------------------------------
def test_slit_predicts_the_next_item_of_a_deterministic_sequence():
    rows = []
    for k in range(30):
        rows += [(f"u{k}", "A", 0), (f"u{k}", "B", S), (f"u{k}", "C", 2 * S)]
    rows += [("z", "D", 0), ("z", "E", S)]
    data, _ = dataset_from_events(events(rows))
    a, b, c = (list(data.item_ids).index(x) for x in "ABC")
    model = SLIT(SlitParams(lam=1.0, horizon=1))
    model.fit(data)
    after_a = model.score([ctx([a], [0])])[0]
    after_ab = model.score([ctx([a, b], [0, S])])[0]
    assert int(np.argmax(after_a)) == b
    after_ab[[a, b]] = -np.inf  # seen
    assert int(np.argmax(after_ab)) == c


def test_slit_equals_the_float64_ridge_solution_and_keeps_its_top_neighbours():
    """B = (XᵀX + λI)⁻¹ XᵀY over the training rows, to 1e-5 of max |B|; pruned rows keep B's largest |weights|."""
    data, _ = dataset_from_events(_random_views(300, 60, 8, seed=2))
    params = SlitParams(lam=5.0, neighbours=data.n_items)
    x, y = (
        m.toarray()
        for m in training_rows(
            data.events, data.n_items, params.last, params.decay, params.horizon, params.horizon_decay, params.tie_ms
        )
    )
    expected = np.linalg.solve(x.T @ x + params.lam * np.eye(data.n_items), x.T @ y)
    full = SLIT(params)
    full.fit(data)
    got = full.matrix.toarray()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    pruned = SLIT(params.model_copy(update={"neighbours": 10}))
    pruned.fit(data)
    assert [set(row.indices.tolist()) for row in pruned.matrix] == _top_sets(expected, 10)


# --- session-KNN ----------------------------------------------------------------------------------------
def test_session_knn_votes_of_users_who_touched_the_latest_items():
    rows = [("u1", "A", 0), ("u1", "X", S), ("u2", "B", 0), ("u2", "Y", S), ("me", "B", 0), ("me", "A", 9 * S)]
    data, _ = dataset_from_events(events(rows))
    ids = list(data.item_ids)
    me = list(data.user_ids).index("me")
    model = SessionKNN()
    model.fit(data)
    scores = model.score([ctx([ids.index("B"), ids.index("A")], [0, 9 * S], row=me)])
    assert scores.shape == (1, len(ids))
    assert scores[0, ids.index("X")] > scores[0, ids.index("Y")] > 0  # A is the newer event: u1 is nearer
    near = model.neighbours([ctx([ids.index("A")], [0], row=me)])
    assert near[0, me] == 0  # never one's own neighbour


# --- the hybrid -------------------------------------------------------------------------------------------
def test_the_reranker_is_kept_only_when_it_wins_cross_validation():
    rng = np.random.default_rng(0)
    n, c = 60, 12
    cand = np.tile(np.arange(c), (n, 1))
    good = rng.integers(0, c, n)  # one relevant candidate per user, at a random stage-1 place
    relevant = sp.csr_matrix((np.ones(n), (np.arange(n), good)), shape=(n, c))
    labels = np.zeros((n, c))
    labels[np.arange(n), good] = 1.0
    informative = np.concatenate([labels[..., None], rng.normal(size=(n, c, 1))], axis=-1)
    kept, cv = choose_reranker(informative, labels, relevant, cand, (1.0,), seed=0)
    assert kept is not None and cv["kept"] and cv["reranked"]["1.0"] > cv["blend"]
    # Stage 1 already puts the relevant item first; features are noise: the re-ranker cannot win.
    relevant0 = sp.csr_matrix((np.ones(n), (np.arange(n), np.zeros(n, int))), shape=(n, c))
    labels0 = relevant0.toarray()
    dropped, cv0 = choose_reranker(rng.normal(size=(n, c, 2)), labels0, relevant0, cand, (1.0,), seed=0)
    assert dropped is None and not cv0["kept"]


def _toy_events() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for u in range(40):
        start = int(rng.integers(0, 3))
        for step in range(8):  # users walk along a ring of 12 items, one per second, some in pages of two
            rows.append(
                (
                    f"u{u:02d}",
                    f"i{(start + step) % 12:02d}",
                    (u * 100 + step // 2 * 2) * S if u % 2 else (u * 100 + step) * S,
                )
            )
    return events(rows)


def test_hybrid_fits_scores_saves_and_updates_in_real_time(tmp_path):
    data, _ = dataset_from_events(_toy_events())
    params = HybridParams(tune_users=10, component_params={"implicit_als": {"rank": 4, "iterations": 2}})
    model = Hybrid(params)
    model.fit(data)
    assert set(model.weights) == set(params.weights)
    users = data.contexts([0, 1, 2], model.recent_events)
    scores = model.score(users)
    assert scores.shape == (3, data.n_items) and np.isfinite(scores).all()
    visitor = model.score([UserContext()])
    assert (visitor > 0).sum() > 0  # the popularity term answers a user nothing else can score
    state = model.update_users(users)
    assert state is not None and state.shape == (3, model.state_size)
    for c, st in zip(users, state, strict=True):
        c.state = st
    np.testing.assert_allclose(model.score(users), scores, rtol=1e-4, atol=1e-6)  # fold-in reproduces the batch
    files = model.save(tmp_path)
    assert "blend" in files
    loaded = Hybrid.load(tmp_path, model.params, data)
    np.testing.assert_allclose(loaded.score(users), model.score(users), rtol=1e-5, atol=1e-7)


def test_hybrid_without_tuning_uses_the_given_weights():
    data, _ = dataset_from_events(_toy_events())
    weights = {"item_knn": 1.0, "transitions_last": 0.5}
    model = Hybrid(HybridParams(tune=False, weights=weights))
    model.fit(data)
    assert model.weights == weights and set(model.components) == set(weights) and model.reranker is None


def test_priors_shares_match_a_direct_count_and_survive_save_and_load(tmp_path):

    data, _ = dataset_from_events(_toy_events())
    priors = Priors.fit(data, window=2, days=1.0)
    ptr = data.events.indptr(data.n_users)
    position = np.arange(len(data.events)) - np.repeat(ptr[:-1], np.diff(ptr))
    user = data.context(3, 50)
    cand = np.arange(data.n_items)[None, :]
    got = np.exp(priors.shares([user], cand)[0]) - 1e-5
    n = len(user.items)
    band = (position >= n - 2) & (position < n + 2)
    expected = np.bincount(data.events.item[band], minlength=data.n_items) / band.sum()
    np.testing.assert_allclose(got[:, 2], expected, atol=1e-9)
    np.testing.assert_allclose(got[:, 0], data.popularity() / data.popularity().sum(), atol=1e-7)
    priors.save(tmp_path / "p.npz")
    again = Priors.load(tmp_path / "p.npz")
    np.testing.assert_allclose(again.shares([user], cand), priors.shares([user], cand))


@settings(max_examples=200, deadline=None)
@given(
    histories=hs.lists(
        hs.lists(hs.tuples(hs.integers(0, 7), hs.integers(0, 5), hs.integers(0, 2)), max_size=40), max_size=6
    ),
    last=hs.integers(0, 30),
    tie_ms=hs.sampled_from([0, 1000]),
)
def test_recent_weights_is_scipys_coo_matrix_bit_for_bit(histories, last, tie_ms):
    """Repeats (an item clicked again and again, new items beyond the model's) sum as scipy's COO route sums them."""
    users = [
        UserContext(
            recent=np.array([i for i, _, _ in h], np.int64),
            recent_ts_ms=np.cumsum([t * 400 for _, t, _ in h]).astype(np.int64),
            recent_kinds=np.array([k for _, _, k in h], np.int8),
        )
        for h in histories
    ]
    for kinds in (None, np.array([1.0, 2.5, 0.3])):
        new = recent_weights(users, 6, last, 0.77, kinds, tie_ms)
        old = _recent_weights_coo(users, 6, last, 0.77, kinds, tie_ms)
        assert new.shape == old.shape and new.dtype == old.dtype == np.float32
        np.testing.assert_array_equal(new.indptr, old.indptr)
        np.testing.assert_array_equal(new.indices, old.indices)
        np.testing.assert_array_equal(new.data, old.data)
