"""The norm-bounded top-k scan is exact: the same top-k, order and scores as sorting every item's float32 score."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data.inputs import NewItems, UserContext
from recsys.models import norm_index
from recsys.models.als import ImplicitALS
from recsys.models.norm_index import NormIndex, canonical_all, canonical_scores, merge_k_best
from recsys.topk import PAD, full_sort_top_k

# Finite, normal float32 values of factor-like size; a coarse grid makes exact ties (equal scores) common.
GRID = st.integers(-8, 8).map(lambda v: v / 4)
FLOATS = st.floats(-4, 4, width=32, allow_subnormal=False, allow_nan=False, allow_infinity=False)


def reference(x: np.ndarray, items: np.ndarray, k: int, exclude: np.ndarray | None, allowed: np.ndarray | None):
    """The fp32 full sort: every item's score, exclusions and the filter applied, sorted (ties by position)."""
    scores = canonical_all(x, items)
    if exclude is not None and len(exclude):
        scores[exclude] = -np.inf
    if allowed is not None:
        scores[~allowed] = -np.inf
    idx, val = full_sort_top_k(scores, k)
    keep = (idx != PAD) & np.isfinite(val)
    return idx[keep], val[keep]


@st.composite
def cases(draw):
    rank = draw(st.integers(1, 12))
    n = draw(st.integers(1, 120))
    n_new = draw(st.integers(0, 6))
    values = draw(st.sampled_from([GRID, FLOATS]))
    items = np.array(
        draw(st.lists(st.lists(values, min_size=rank, max_size=rank), min_size=n + n_new, max_size=n + n_new)),
        dtype=np.float32,
    )
    if n + n_new > 1 and draw(st.booleans()):  # duplicated items: equal vectors must score equal
        src = draw(st.lists(st.integers(0, n + n_new - 1), min_size=1, max_size=10))
        dst = draw(st.lists(st.integers(0, n + n_new - 1), min_size=len(src), max_size=len(src)))
        items[dst] = items[src]
    n_users = draw(st.integers(1, 5))
    users = np.array(
        draw(st.lists(st.lists(values, min_size=rank, max_size=rank), min_size=n_users, max_size=n_users)),
        dtype=np.float32,
    )
    if draw(st.booleans()):
        users[0] = 0.0  # a user nothing is known of: every score ties at 0
    total = n + n_new
    exclude = [
        np.array(sorted(set(draw(st.lists(st.integers(0, total - 1), max_size=total)))), dtype=np.int64)
        if draw(st.booleans())
        else None
        for _ in range(n_users)
    ]
    allowed = [
        np.array(draw(st.lists(st.booleans(), min_size=total, max_size=total)), dtype=bool)
        if draw(st.booleans())
        else None
        for _ in range(n_users)
    ]
    k = draw(st.integers(1, 25))
    block = draw(st.integers(1, 40))
    group = draw(st.integers(1, 4))
    grouped_from = draw(st.integers(1, 6))  # the batch's few rows go through the groups or not
    return items[:n], items[n:], users, exclude, allowed, k, block, group, grouped_from


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_norm_index_top_k_equals_the_fp32_full_sort(case):
    base, new, users, exclude, allowed, k, block, group, grouped_from = case
    index = NormIndex(base, block=block, group=group, grouped_from=grouped_from)
    got = index.top_k(users, k, exclude, allowed, new if len(new) else None)
    everything = np.vstack([base, new]) if len(new) else base
    for r, x in enumerate(users):
        want_idx, want_val = reference(x, everything, k, exclude[r], allowed[r])
        np.testing.assert_array_equal(got[r][0], want_idx)
        np.testing.assert_array_equal(got[r][1], want_val)


def test_the_scan_reads_only_the_blocks_that_can_win():
    rng = np.random.default_rng(0)
    # Norms falling off like ALS factors' (popular items large, the long tail small).
    items = (rng.standard_normal((20_000, 32)) * (1.0 / np.arange(1, 20_001) ** 0.7)[:, None]).astype(np.float32)
    users = rng.standard_normal((8, 32)).astype(np.float32)
    index = NormIndex(items, block=256)
    got = index.top_k(users, 10, [None] * 8, [None] * 8)
    assert index.last_blocks_read < 8 * len(index.starts) / 10  # far less than a full scan
    for r, x in enumerate(users):
        np.testing.assert_array_equal(got[r][0], reference(x, items, 10, None, None)[0])


def test_canonical_scores_do_not_depend_on_the_batch():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((500, 64)).astype(np.float32)
    x = rng.standard_normal(64).astype(np.float32)
    full = canonical_all(x, items)
    some = rng.choice(500, 37, replace=False)
    np.testing.assert_array_equal(canonical_scores(np.repeat(x[None], 37, 0), items[some]), full[some])


def test_als_serves_through_the_interface_exactly():
    """`recommend_many` of the ALS recommender (serving's call) answers as the fp32 full sort of its factors."""
    rng = np.random.default_rng(2)
    model = ImplicitALS(ImplicitALS.Params(rank=16, reg=1.0, alpha=1.0))
    model.item_factors = (rng.standard_normal((3_000, 16)) / np.arange(1, 3_001)[:, None] ** 0.5).astype(np.float32)
    model.user_factors = rng.standard_normal((5, 16)).astype(np.float32)
    model.n_items = 3_000
    users = [UserContext(row=r) for r in range(5)]
    new = NewItems(("n1", "n2"), rng.standard_normal((2, 16)).astype(np.float32))
    exclude = [np.array([0, 1, 2]), None, np.array([3_000]), None, None]
    allowed = [None, None, None, rng.random(3_002) < 0.3, None]
    got = model.recommend_many(users, 10, exclude, allowed, new)
    everything = np.vstack([model.item_factors, new.states])
    for r in range(5):
        want = reference(model.user_factors[r], everything, 10, exclude[r], allowed[r])
        np.testing.assert_array_equal(got[r][0], want[0])
        np.testing.assert_array_equal(got[r][1], want[1])


def test_pairs_scored_in_chunks_are_the_canonical_scores():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 48)).astype(np.float32)
    items = rng.standard_normal((3000, 48)).astype(np.float32)
    rows = rng.integers(0, 9, size=2 * norm_index.PAIR_CHUNK + 17)  # chunks and a short last one
    positions = rng.integers(0, 3000, size=len(rows))
    got = norm_index.canonical_pairs(x, rows, items, positions)
    np.testing.assert_array_equal(got, canonical_scores(x[rows], items[positions]))


@st.composite
def merges(draw):
    k = draw(st.integers(1, 12))
    group = draw(st.integers(1, 6))
    width = group * draw(st.integers(1, 30)) + draw(st.sampled_from([0, 0, 0, 1]))  # mostly a multiple
    rows = draw(st.integers(1, 4))
    # Coarse values make ties common; -inf stands for excluded items, and a row of `best` may still be all -inf.
    value = st.one_of(st.integers(-3, 3).map(float), st.just(-np.inf))
    best = np.array(draw(st.lists(st.lists(value, min_size=k, max_size=k), min_size=rows, max_size=rows)))
    block = np.array(draw(st.lists(st.lists(value, min_size=width, max_size=width), min_size=rows, max_size=rows)))
    return best.astype(np.float32), block.astype(np.float32), group


@settings(max_examples=400, deadline=None)
@given(merges())
def test_merging_k_best_through_group_maxima_keeps_the_k_largest_values(case):
    best, block, group = case
    k = best.shape[1]
    got = merge_k_best(best, block, group, norm_index.group_maxima(block, group))
    want = np.partition(np.concatenate([best, block], axis=1), -k, axis=1)[:, -k:]
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))


@settings(max_examples=300, deadline=None)
@given(merges(), st.integers(-4, 4))
def test_values_at_or_above_a_floor_found_through_group_maxima_are_all_of_them(case, level):
    _, block, group = case
    floor = np.full(len(block), float(level), np.float32)
    floor[0] = -np.inf  # a row whose floor admits everything, -inf included
    maxima = norm_index.group_maxima(block, group)
    rows, columns = norm_index.at_or_above(block, floor, group, maxima)
    want_rows, want_columns = np.nonzero(block >= floor[:, None])
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == list(
        zip(want_rows.tolist(), want_columns.tolist(), strict=True)
    )
