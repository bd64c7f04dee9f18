"""Ranking metrics against hand-computed small cases, and AUC against a brute-force pair count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.evaluation.metrics import auc_per_user, coverage_at_k, hits, per_user_metrics, ranking_metrics


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """One row per user, 1.0 at the listed items."""
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), dtype=np.float32), (r, c)), shape=(len(rows), n_items))


# k = 4, 9 items. User 2 has no held-out items and must be ignored (its list holds item 8).
RECOMMENDED = np.array([[0, 1, 2, 3], [4, 2, -1, -1], [8, 7, 6, 5], [5, 6, 7, 0]])
RELEVANT = _csr([[1, 3, 5, 6, 7], [2], [], [8]], 9)

D = [1 / math.log2(i + 1) for i in range(1, 5)]  # rank discounts 1/log2(i+1)
# user 0: |rel| = 5 > k, hits at ranks 2 and 4
U0 = {
    "precision": 2 / 4,
    "recall": 2 / 4,  # divides by min(k, |rel|) = 4, not 5
    "f1": 0.5,
    "ndcg": (D[1] + D[3]) / sum(D),
    "ap": (1 / 2 + 2 / 4) / 4,
}
# user 1: |rel| = 1 < k, hit at rank 2, list padded with -1
U1 = {
    "precision": 1 / 4,
    "recall": 1.0,
    "f1": 2 * 0.25 * 1.0 / 1.25,
    "ndcg": D[1] / D[0],  # IDCG over min(k, |rel|) = 1 item
    "ap": (1 / 2) / 1,
}
# user 3: no hits
U3 = dict.fromkeys(U0, 0.0)


def test_hits_marks_relevant_items_and_never_padding() -> None:
    h = hits(RECOMMENDED, RELEVANT)
    assert h.tolist() == [
        [False, True, False, True],
        [False, True, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]


def test_padding_never_hits_item_zero() -> None:
    # -1 is encoded like item 0 internally; item 0 being relevant must not turn padding into a hit.
    h = hits(np.array([[-1, 0]]), _csr([[0]], 3))
    assert h.tolist() == [[False, True]]


def test_explicit_zeros_are_not_relevant() -> None:
    rel = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    assert hits(np.array([[0, 1]]), rel).tolist() == [[False, True]]


@pytest.mark.parametrize(("row", "expected"), [(0, U0), (1, U1), (3, U3)])
def test_per_user_metrics_match_hand_computation(row: int, expected: dict[str, float]) -> None:
    got = per_user_metrics(RECOMMENDED[[row]], RELEVANT[[row]])
    for name, value in expected.items():
        assert got[name][0] == pytest.approx(value), name


def test_per_user_metrics_reject_rows_without_relevant_items() -> None:
    with pytest.raises(ValueError, match="relevant"):
        per_user_metrics(RECOMMENDED, RELEVANT)


def test_ranking_metrics_average_over_users_with_test_items_only() -> None:
    out = ranking_metrics(RECOMMENDED, RELEVANT)
    assert set(out) == {"precision@4", "recall@4", "f1@4", "ndcg@4", "map@4", "auc", "coverage@4", "n_users"}
    assert out["n_users"] == 3
    for metric, key in [
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1"),
        ("ndcg", "ndcg"),
        ("map", "ap"),
    ]:
        assert out[f"{metric}@4"] == pytest.approx((U0[key] + U1[key] + U3[key]) / 3), metric
    # Items 0..7 are recommended to evaluated users; item 8 only to user 2, who is not evaluated.
    assert out["coverage@4"] == pytest.approx(8 / 9)
    assert math.isnan(out["auc"])  # no scores given


def test_ranking_metrics_with_a_subset_of_users() -> None:
    out = ranking_metrics(RECOMMENDED[[1, 2]], RELEVANT, users=np.array([1, 2]))
    assert out["n_users"] == 1
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["ndcg@4"] == pytest.approx(U1["ndcg"])
    assert out["coverage@4"] == pytest.approx(2 / 9)


def test_ranking_metrics_key_follows_k() -> None:
    out = ranking_metrics(np.zeros((1, 10), dtype=int) - 1, _csr([[0]], 3))
    assert out["precision@10"] == 0.0 and out["coverage@10"] == 0.0


def test_perfect_list_scores_one_when_fewer_relevant_than_k() -> None:
    rel = _csr([[2, 5]], 10)
    out = ranking_metrics(np.array([[5, 2, 0, 1]]), rel)
    assert out["recall@4"] == out["ndcg@4"] == out["map@4"] == pytest.approx(1.0)
    assert out["precision@4"] == pytest.approx(0.5)


def test_coverage() -> None:
    assert coverage_at_k(np.array([[0, 1, -1], [1, 2, -1]]), 6) == pytest.approx(0.5)


def test_auc_hand_computed_with_ties_and_train_items() -> None:
    scores = np.array(
        [
            [9.0, 0.5, 0.2, 0.5, 0.8],  # train {0}, test {1}: negatives 0.2 (win), 0.5 (tie), 0.8 (loss)
            [1.0, 2.0, 3.0, 4.0, 5.0],  # test {3, 4} beat every negative
            [1.0, 1.0, 1.0, 1.0, 1.0],  # all tied: 1/2
        ]
    )
    test = _csr([[1], [3, 4], [0]], 5)
    train = _csr([[0], [], []], 5)
    auc = auc_per_user(lambda rows: scores[rows], test, train, batch_size=2)
    assert auc == pytest.approx([1.5 / 3, 1.0, 0.5])


def test_auc_is_nan_without_negatives() -> None:
    auc = auc_per_user(lambda rows: np.ones((len(rows), 2)), _csr([[0], [1]], 2), _csr([[1], []], 2))
    assert math.isnan(auc[0]) and auc[1] == pytest.approx(0.5)


def _brute_auc(s: np.ndarray, pos: set[int], train: set[int]) -> float:
    neg = [j for j in range(s.size) if j not in pos and j not in train]
    pairs = [(s[i] > s[j]) + 0.5 * (s[i] == s[j]) for i in pos - train for j in neg]
    return float(np.mean(pairs))


@pytest.mark.parametrize(
    ("m", "test_density"),
    [(30, 0.15), (200, 0.4)],  # few positives per user (compared one by one) and many (binary search)
)
def test_auc_matches_brute_force_pair_count_on_random_data(m: int, test_density: float) -> None:
    rng = np.random.default_rng(1)
    n = 40
    scores = rng.integers(0, 6, size=(n, m)).astype(np.float32)  # small integers: many ties
    test = (sp.random(n, m, density=test_density, random_state=2, format="csr") > 0).astype(np.float32)
    train = (sp.random(n, m, density=0.3, random_state=3, format="csr") > 0).astype(np.float32)
    users = np.array([u for u in range(n) if (test[u].toarray() > train[u].toarray()).any()])
    got = auc_per_user(lambda rows: scores[rows], test, train, users=users, batch_size=7)
    want = [_brute_auc(scores[u], set(test[u].indices), set(train[u].indices)) for u in users]
    assert got == pytest.approx(want)


def test_ranking_metrics_averages_auc_over_evaluated_users() -> None:
    scores = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    test = _csr([[2], [2]], 3)
    out = ranking_metrics(np.array([[2], [0]]), test, scores_fn=lambda rows: scores[rows])
    assert out["auc"] == pytest.approx(0.5)  # 1.0 and 0.0
    assert out["precision@1"] == pytest.approx(0.5)
