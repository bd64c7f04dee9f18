"""Top-k retrieval against a brute-force full sort."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.topk import normalize_rows, similar_items, top_k, top_k_popular


def _brute_top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
    """Full stable sort by (-score, index) of every row, excluded items dropped, padded with -1 / -inf."""
    n, m = scores.shape
    idx = np.full((n, k), -1, dtype=np.int64)
    val = np.full((n, k), -np.inf, dtype=np.float32)
    for u in range(n):
        banned = set() if exclude is None else set(exclude[u].indices[exclude[u].data != 0])
        ranked = [i for i in np.lexsort((np.arange(m), -scores[u])) if i not in banned][:k]
        idx[u, : len(ranked)] = ranked
        val[u, : len(ranked)] = scores[u, ranked]
    return idx, val


@pytest.fixture
def factors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(53, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 5, 39, 40, 55])
@pytest.mark.parametrize("batch_size", [1, 7, 2048])
def test_top_k_matches_full_sort(factors, k: int, batch_size: int) -> None:
    users, items = factors
    exclude = sp.random(53, 40, density=0.3, random_state=1, format="csr")
    got_idx, got_val = top_k(users, items, k, exclude=exclude, batch_size=batch_size)
    want_idx, want_val = _brute_top_k(users @ items.T, k, exclude)
    assert got_idx.shape == (53, k) and got_idx.dtype == np.int64 and got_val.dtype == np.float32
    np.testing.assert_array_equal(got_idx, want_idx)
    # float32 dot products differ with the BLAS kernel (gemv for one row, gemm for many) by a few ulps of the
    # largest score, so a score near 0 cannot be held to a relative tolerance.
    scale = np.abs(want_val[np.isfinite(want_val)]).max()
    np.testing.assert_allclose(got_val, want_val, rtol=1e-5, atol=1e-6 * scale)


def test_top_k_without_exclusions(factors) -> None:
    users, items = factors
    got_idx, _ = top_k(users, items, 10)
    want_idx, _ = _brute_top_k(users @ items.T, 10, None)
    np.testing.assert_array_equal(got_idx, want_idx)


def test_top_k_pads_rows_with_fewer_items_than_k() -> None:
    users = np.ones((2, 1), dtype=np.float32)
    items = np.array([[3.0], [1.0], [2.0]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[1, 0, 1], [1, 1, 1]]))
    idx, val = top_k(users, items, 4, exclude=exclude)
    assert idx.tolist() == [[1, -1, -1, -1], [-1, -1, -1, -1]]
    assert val[0, 0] == 1.0 and np.isneginf(val[0, 1:]).all() and np.isneginf(val[1]).all()


def test_top_k_explicit_zero_does_not_exclude() -> None:
    exclude = sp.csr_matrix((np.array([0.0]), np.array([0]), np.array([0, 1])), shape=(1, 2))
    idx, _ = top_k(np.ones((1, 1)), np.array([[2.0], [1.0]]), 2, exclude=exclude)
    assert idx.tolist() == [[0, 1]]


def test_top_k_rejects_bad_arguments(factors) -> None:
    users, items = factors
    with pytest.raises(ValueError):
        top_k(users, items, 0)
    with pytest.raises(ValueError):
        top_k(users, items[:, :3], 5)
    with pytest.raises(ValueError):
        top_k(users, items, 5, exclude=sp.csr_matrix((2, 40)))


@pytest.mark.parametrize("k", [1, 3, 12, 20])
def test_top_k_popular_matches_full_sort(k: int) -> None:
    rng = np.random.default_rng(3)
    pop = rng.integers(0, 5, size=15).astype(float)  # many ties: broken by item index
    exclude = sp.random(30, 15, density=0.4, random_state=4, format="csr")
    got_idx, got_val = top_k_popular(pop, k, exclude=exclude, batch_size=4)
    want_idx, want_val = _brute_top_k(np.tile(pop, (30, 1)), k, exclude)
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_array_equal(got_val, want_val)


def test_top_k_popular_without_exclusions() -> None:
    idx, val = top_k_popular(np.array([1.0, 5.0, 3.0]), 2, n_rows=3)
    assert idx.tolist() == [[1, 2]] * 3
    assert val.tolist() == [[5.0, 3.0]] * 3
    assert top_k_popular(np.array([1.0]), 2)[0].tolist() == [[0, -1]]


def test_similar_items_by_cosine_excludes_itself() -> None:
    rng = np.random.default_rng(5)
    items = rng.normal(size=(25, 6)).astype(np.float32)
    items[7] = 0.0  # a zero vector has cosine 0 with everything, and must not break the division
    idx, val = similar_items(items, 3, 5)
    unit = normalize_rows(items)
    cos = unit @ unit[3]
    cos[3] = -np.inf
    assert idx.tolist() == list(np.argsort(-cos, kind="stable")[:5])
    np.testing.assert_allclose(val, cos[idx], rtol=1e-5)
    assert 3 not in idx
    assert similar_items(items, 0, 30)[0].tolist()[-6:] == [-1] * 6  # 24 other items, k = 30


def test_similar_items_rejects_unknown_index() -> None:
    with pytest.raises(IndexError):
        similar_items(np.ones((3, 2)), 3, 1)


def test_top_k_of_scores_matches_a_full_sort_on_ties_infs_and_nans():
    from recsys.topk import full_sort_top_k, top_k_of_scores

    rng = np.random.default_rng(5)
    for trial in range(400):
        m = int(rng.integers(1, 3000))
        scores = rng.normal(size=m).astype(np.float32)
        if trial % 3 == 0:
            scores[rng.random(m) < 0.5] = -np.inf  # excluded items
        if trial % 5 == 0:
            scores = np.round(scores, 1)  # many ties
        if trial % 7 == 0:
            scores[rng.random(m) < 0.1] = np.nan
        k = int(rng.integers(1, 50))
        fast, naive = top_k_of_scores(scores, k), full_sort_top_k(scores, k)
        np.testing.assert_array_equal(fast[1], naive[1])  # the same k best scores, best first
        above_kth = fast[1] > fast[1][-1]  # ties at the k-th place may be broken either way
        np.testing.assert_array_equal(fast[0][above_kth], naive[0][above_kth])
        assert ((fast[0] == -1) == np.isneginf(fast[1])).all()  # padding, never a recommendation


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(1, 6),
    m=st.integers(1, 2000),
    k=st.integers(1, 40),
    distinct=st.sampled_from([1, 3, 30, 10**6]),
    excluded=st.floats(0.0, 1.0),
    cap=st.sampled_from([8, 512]),
    seed=st.integers(0, 2**32 - 1),
)
def test_select_top_is_the_head_of_a_stable_descending_sort(rows, m, k, distinct, excluded, cap, seed):
    """Row by row, exactly `full_sort_top_k` (a stable sort: of items tied at the k-th place the lowest win),
    on few distinct values (heavy ties) or many, -inf (excluded items) and NaN; with a small candidate cap
    too, so that rows go through the exact cut."""
    from unittest import mock

    from recsys import topk
    from recsys.topk import full_sort_top_k, select_top

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, distinct, size=(rows, m)).astype(np.float32)
    scores[rng.random((rows, m)) < excluded] = -np.inf
    scores[rng.random((rows, m)) < 0.05] = np.nan
    with mock.patch.object(topk, "_CANDIDATES_MAX", cap):
        idx, val = select_top(scores, k)
    for r in range(rows):
        want_idx, want_val = full_sort_top_k(scores[r], k)
        np.testing.assert_array_equal(idx[r], want_idx)
        np.testing.assert_array_equal(val[r], want_val)
