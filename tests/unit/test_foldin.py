"""The fold-in math, checked against first principles and against the `implicit` library's own solver."""

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.models.als import FoldIn, Objective, confidence, regulariser

SPARK = Objective(confidence="one_plus_alpha_r", reg_scaling="count", alpha=2.0, reg=0.1)
IMPLICIT = Objective(confidence="alpha_r", reg_scaling="none", alpha=3.0, reg=0.5)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(40, 6))
    strengths = sp.random(8, 40, density=0.2, format="csr", random_state=1) * 5 + 0
    strengths.data += 0.5
    return items, strengths.tocsr()


def loss_gradient(x, items, row, objective):
    """d/dx of sum_i c_ui (p_ui - x.y_i)^2 + lambda_u |x|^2 over ALL items (p = 0, c = 1 where r = 0)."""
    r = row.toarray().ravel()
    p = (r > 0).astype(float)
    scaled = objective.alpha * r
    c = np.where(r > 0, 1 + scaled if objective.confidence == "one_plus_alpha_r" else scaled, 1.0)
    lam = objective.reg * (p.sum() if objective.reg_scaling == "count" else 1)
    residual = items @ x - p
    return 2 * items.T @ (c * residual) + 2 * lam * x


@pytest.mark.parametrize("objective", [SPARK, IMPLICIT], ids=["spark", "implicit"])
def test_folded_vector_minimises_the_objective(problem, objective):
    items, strengths = problem
    vectors = FoldIn(items, objective).vectors(strengths)
    for u in range(strengths.shape[0]):
        grad = loss_gradient(vectors[u].astype(float), items, strengths[u], objective)
        assert np.abs(grad).max() < 1e-3 * max(1.0, np.abs(items).sum())


def test_batched_solve_equals_one_at_a_time(problem):
    items, strengths = problem
    fold = FoldIn(items, SPARK)
    batch = fold.vectors(strengths)
    for u in range(strengths.shape[0]):
        row = strengths[u]
        np.testing.assert_allclose(fold.vector(row.indices, row.data), batch[u], rtol=1e-5, atol=1e-6)


def test_a_user_with_no_interactions_gets_a_zero_vector(problem):
    items, _ = problem
    empty = sp.csr_matrix((2, items.shape[0]))
    assert not FoldIn(items, SPARK).vectors(empty).any()


def test_matches_the_implicit_librarys_own_recalculation(problem):
    from implicit.cpu.als import AlternatingLeastSquares

    _, strengths = problem
    model = AlternatingLeastSquares(
        factors=6, regularization=IMPLICIT.reg, alpha=IMPLICIT.alpha, iterations=3, use_cg=False, random_state=0
    )
    model.fit(strengths.astype(np.float32), show_progress=False)
    theirs = model.recalculate_user(np.arange(strengths.shape[0]), strengths.astype(np.float32))
    ours = FoldIn(model.item_factors, IMPLICIT).vectors(strengths)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


def test_large_batches_are_solved_in_chunks_with_the_same_result(problem, monkeypatch):
    import recsys.models.als

    items, strengths = problem
    whole = FoldIn(items, SPARK).vectors(strengths)
    monkeypatch.setattr(recsys.models.als, "SOLVE_CHUNK", 3)
    np.testing.assert_allclose(FoldIn(items, SPARK).vectors(strengths), whole, rtol=1e-6)


@pytest.mark.parametrize("objective", [SPARK, IMPLICIT], ids=["spark", "implicit"])
def test_each_row_is_the_textbook_solve_whatever_its_length(objective):
    """Histories from 1 entry to more than the rank (the short and the long solve, several padded lengths),
    with entries that are not positive (left out), against x = (YᵀY + Σ (c−1) y yᵀ + λI)⁻¹ Σ c y per row."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(60, 4))
    lengths = [1, 2, 3, 4, 5, 7, 9, 17, 40]
    rows = sp.vstack(
        [
            sp.csr_matrix((rng.uniform(-1, 4, n), (np.zeros(n, int), rng.choice(60, n, replace=False))), shape=(1, 60))
            for n in lengths
        ]
    ).tocsr()
    got = FoldIn(items, objective).vectors(rows)
    for r in range(len(lengths)):
        row = rows[r]
        keep = row.data > 0
        y, c = items[row.indices[keep]], confidence(objective, row.data[keep])
        lhs = items.T @ items + (y.T * (c - 1)) @ y + regulariser(objective, int(keep.sum())) * np.eye(4)
        np.testing.assert_allclose(got[r], np.linalg.solve(lhs, c @ y), rtol=1e-5, atol=1e-6)
