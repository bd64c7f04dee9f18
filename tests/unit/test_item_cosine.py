"""ItemKNN's cosines computed in row blocks are the whole matrix's, entry for entry and value for value."""

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.models.item_knn import item_cosine
from recsys.models.sparse import top_n_per_row


def whole_matrix(co: sp.csr_matrix, shrink: float, neighbours: int) -> sp.csr_matrix:
    """The definition, all at once: diagonal out, c_ij / (sqrt(n_i n_j) + shrink), top `neighbours` per row."""
    n = co.diagonal().astype(np.float64)
    co = sp.csr_matrix(co, dtype=np.float64, copy=True)
    co.setdiag(0)
    co.eliminate_zeros()
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    co.data = co.data / (np.sqrt(n[rows] * n[co.indices]) + shrink)
    return top_n_per_row(co, neighbours)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), chunk=st.sampled_from([1, 5, 60, 10**9]))
def test_blocks_of_rows_give_the_whole_matrix_answer(seed, chunk):
    rng = np.random.default_rng(seed)
    n_users, n_items, density = int(rng.integers(1, 121)), int(rng.integers(1, 91)), float(rng.uniform(0, 0.4))
    neighbours = int(rng.integers(1, 31))
    x = sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))
    co = sp.csr_matrix(x.T @ x)
    ours, want = item_cosine(co, 5.0, neighbours, chunk=chunk), whole_matrix(co, 5.0, neighbours)
    assert ours.shape == want.shape and ours.dtype == want.dtype == np.float32
    for a, b in ((ours.indptr, want.indptr), (ours.indices, want.indices), (ours.data, want.data)):
        assert np.array_equal(a, b)
