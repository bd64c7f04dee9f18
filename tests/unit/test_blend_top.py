"""The tuning search's top 10 from the components' candidate lists is the dense blend's top 10, exactly."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.models.hybrid.blend import BlendTop, blend, normalised
from recsys.topk import select_top

GRID = (0.0, 0.05, 0.3, 1.0, 1.5)


def dense_top(norm: dict[str, np.ndarray], seen: np.ndarray, weights: dict[str, float], k: int) -> np.ndarray:
    """The definition: the whole blend, seen items at -inf, sorted (what the search did before)."""
    scores = blend(norm, weights).copy()
    scores[seen] = -np.inf
    return select_top(scores, k)[0]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_users=st.integers(1, 12),
    n_items=st.integers(1, 80),
    depth=st.integers(1, 30),
    levels=st.sampled_from([0, 3, 50]),  # 0: continuous scores; else few distinct values (many ties)
    seen_share=st.sampled_from([0.0, 0.2, 0.9]),
)
def test_the_candidate_search_ranks_as_the_dense_blend(seed, n_users, n_items, depth, levels, seen_share):
    rng = np.random.default_rng(seed)
    seen = rng.random((n_users, n_items)) < seen_share
    raw = {}
    for name in ("a", "b", "c"):
        s = rng.normal(size=(n_users, n_items)).astype(np.float32)
        if levels:
            s = np.round(s * levels) / levels
        s[rng.random(s.shape) < 0.3] = 0.0  # no evidence
        raw[name] = s.astype(np.float32)
    norm = {n: normalised(s, seen) for n, s in raw.items()}
    search = BlendTop(norm, seen, k=10, depth=depth)
    for _ in range(6):
        weights = {n: float(rng.choice(GRID)) for n in norm}
        assert np.array_equal(search.top(weights), dense_top(norm, seen, weights, 10)), weights


def test_most_users_are_answered_from_the_candidates():
    """The point of it: on scores with a clear head, the lists certify the answer without the dense pass."""
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 5_000
    seen = rng.random((n_users, n_items)) < 0.01
    head = rng.exponential(size=(3, n_users, n_items)).astype(np.float32) ** 3  # heavy-tailed: a few items stand out
    norm = {n: normalised(head[i], seen) for i, n in enumerate(("a", "b", "c"))}
    search = BlendTop(norm, seen, k=10, depth=100)
    weights = {"a": 1.0, "b": 0.3, "c": 0.05}
    assert np.array_equal(search.top(weights), dense_top(norm, seen, weights, 10))
    assert search.densely_ranked < n_users // 2, search.densely_ranked
