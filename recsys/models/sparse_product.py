"""A CSR × CSR product for request-sized left operands: scipy's own kernel, without its per-call Python layers.

`a @ b` on a one-row profile spends most of its time in scipy's wrappers (format checks, index-dtype
searches, two matrix constructions), not in the product. `product` calls the same C routines
(`csr_matmat_maxnnz`, `csr_matmat`) on the same arrays, so every stored value — each a float sum in
the kernel's own order — is the one `a @ b` gives, bit for bit, and so is each row's column order
unless `sort` asks for sorted rows (what two-stage serving reads: `hybrid/candidates.py`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse._sparsetools import csr_matmat, csr_matmat_maxnnz  # the kernel behind `a @ b`

INT32_MAX = np.iinfo(np.int32).max


def product(a: sp.csr_matrix, b: sp.csr_matrix, sort: bool = False) -> sp.csr_matrix:
    """`a @ b` for CSR a and b (`.tocsr()` of it); with `sort`, each row's columns ascending."""
    a, b = (x if x.format == "csr" else x.tocsr() for x in (a, b))
    m, n = a.shape[0], b.shape[1]
    arrays = (a.indptr, a.indices, b.indptr, b.indices)
    wide = any(x.dtype != np.int32 for x in arrays)
    dtype = np.int64 if wide else np.int32
    ap, aj, bp, bj = (np.asarray(x, dtype=dtype) for x in arrays)
    nnz = csr_matmat_maxnnz(m, n, ap, aj, bp, bj)
    if nnz > INT32_MAX and dtype == np.int32:
        dtype = np.int64
        ap, aj, bp, bj = (np.asarray(x, dtype=dtype) for x in arrays)
    indptr = np.empty(m + 1, dtype=dtype)
    indices = np.empty(nnz, dtype=dtype)
    data = np.empty(nnz, dtype=np.result_type(a.dtype, b.dtype))
    csr_matmat(
        m, n, ap, aj, np.asarray(a.data, data.dtype), bp, bj, np.asarray(b.data, data.dtype), indptr, indices, data
    )
    stored = int(indptr[-1])
    indices, data = indices[:stored], data[:stored]
    if sort and stored:
        # Columns are unique within a row, so the (row, column) keys order the entries without ties.
        key = indices.astype(np.int64)
        if m > 1:
            key += np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr)) * n
        order = np.argsort(key)
        indices, data = indices[order], data[order]
    out = trusted_csr(data, indices, indptr, (m, n))
    if sort:
        out.has_sorted_indices = True
    return out


_MAXPRINT = sp.csr_matrix((1, 1)).maxprint


def trusted_csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """`sp.csr_matrix((data, indices, indptr), shape=shape)` for arrays a scipy C routine just wrote (valid by
    construction): the constructor's checks of them (index dtype search, format check) cost a one-user request
    more than the routine did. With int32 indices (all serving has) the attributes are the constructor's own
    (`tests/unit/test_sparse_product.py` compares them); int64 ones stay int64, which scipy's routines take too
    (its constructor would narrow them where the values fit)."""
    out = sp.csr_matrix.__new__(sp.csr_matrix)
    out.__dict__.update(_shape=(int(shape[0]), int(shape[1])), maxprint=_MAXPRINT)
    out.indices, out.indptr, out.data = indices, indptr, data
    return out
