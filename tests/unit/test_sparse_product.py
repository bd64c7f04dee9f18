"""`sparse_product.product` is `a @ b`: the same stored entries, values bit for bit, in the same order per row
(or sorted by column when asked), for the shapes serving uses (a few request rows times a large matrix)."""

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.models.session_knn import unit_rows
from recsys.models.sparse_product import product

# A coarse grid makes exact cancellations (stored zeros the kernel drops) and ties common; the float grid makes
# the float32 summation order visible in the last bits; 1e-30 squares to 0 in float32 (an entry `multiply` drops).
VALUES = st.sampled_from([np.array([-1.0, -0.5, 0.5, 1.0, 2.0]), np.array([1e-30, 3.0, 0.1, 7.0]), None])


@st.composite
def operands(draw):
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 30)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    grid = draw(VALUES)
    rng = np.random.default_rng(seed)

    def random(rows: int, cols: int, density: float) -> sp.csr_matrix:
        x = sp.random(rows, cols, density=density, format="csr", dtype=np.float32, random_state=rng)
        if grid is not None:
            x.data = rng.choice(grid, size=x.nnz).astype(np.float32)
        else:
            x.data = (rng.standard_normal(x.nnz) * 10).astype(np.float32)
        return x

    a = random(m, k, draw(st.floats(0.0, 1.0)))
    b = random(k, n, draw(st.floats(0.0, 1.0)))
    if draw(st.booleans()):  # columns out of order within rows, as a kernel's output is
        a = (a @ random(k, k, 0.5)).tocsr() if a.nnz else a
    return a, b


def entries(x: sp.csr_matrix) -> tuple[list, list, bytes]:
    return x.indptr.tolist(), x.indices.tolist(), np.asarray(x.data, np.float32).tobytes()


@settings(max_examples=300, deadline=None)
@given(operands())
def test_product_is_scipys_product_bit_for_bit(ab):
    a, b = ab
    expected = (a @ b).tocsr()
    got = product(a, b)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert entries(got) == entries(expected)


@settings(max_examples=300, deadline=None)
@given(operands())
def test_sorted_product_is_scipys_product_with_sorted_rows(ab):
    a, b = ab
    expected = (a @ b).tocsr()
    expected.sort_indices()
    got = product(a, b, sort=True)
    assert got.has_sorted_indices
    assert entries(got) == entries(expected)


@settings(max_examples=300, deadline=None)
@given(operands())
def test_unit_rows_is_the_scipy_definition_bit_for_bit(ab):
    a, b = ab
    for x in (b, (a @ b).tocsr()):  # canonical rows, and a kernel's output (unsorted columns: the scipy route)
        out = sp.csr_matrix(x, dtype=np.float32, copy=True)
        norms = np.sqrt(np.asarray(out.multiply(out).sum(axis=1)).ravel())
        expected = (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ out).astype(np.float32).tocsr()
        assert entries(unit_rows(x)) == entries(expected)


@settings(max_examples=100, deadline=None)
@given(ab=operands(), sort=st.booleans())
def test_the_product_is_the_matrix_scipys_constructor_builds(ab, sort):
    """`trusted_csr` skips the constructor's checks: the object must be the one the constructor would build."""
    a, b = ab
    ours = product(a, b, sort=sort)
    checked = sp.csr_matrix((ours.data, ours.indices, ours.indptr), shape=ours.shape)
    assert set(vars(ours)) - {"_has_sorted_indices"} == set(vars(checked))
    assert ours.shape == checked.shape and type(ours.shape[0]) is type(checked.shape[0])
    assert ours.maxprint == checked.maxprint
    for name in ("data", "indices", "indptr"):
        mine, theirs = getattr(ours, name), getattr(checked, name)
        assert mine.dtype == theirs.dtype, name
        np.testing.assert_array_equal(mine, theirs)
    if ours.nnz:
        np.testing.assert_array_equal((ours @ b.T).toarray(), (checked @ b.T).toarray())
