"""The content index's top k is exact: the same items, order and float32 scores as sorting every item's content
score (`Content.score`'s product), under exclusions and filters, on a catalogue of unique rows (MovieLens-100K's
titles) and on one where most rows repeat (the synthetic shop's category, tag and price band)."""

import numpy as np
import pytest

from recsys.data.inputs import ItemAttributes
from recsys.data.movielens import attributes
from recsys.models.base import select
from recsys.models.content import item_features
from recsys.models.hybrid.content_index import ContentIndex


def movielens_features():
    rows = list(attributes().values())
    return item_features(
        ItemAttributes(
            category=np.array([r[0] for r in rows], dtype=object),
            title=np.array([r[1] for r in rows], dtype=object),
            price=np.full(len(rows), np.nan),
            tags=np.array([r[3] for r in rows], dtype=object),
        ),
        0.5,
    )[0]


def shop_features(n: int = 3000):
    rng = np.random.default_rng(1)
    categories = rng.integers(0, 12, n)
    return item_features(
        ItemAttributes(
            category=np.array([f"category-{c}" for c in categories], dtype=object),
            title=np.array([f"Product {j}" for j in range(n)], dtype=object),
            price=np.exp(rng.uniform(0, 6, n)),
            tags=np.array([f"category-{c}" for c in categories], dtype=object),
        ),
        0.5,
    )[0]


@pytest.fixture(scope="module", params=["movielens", "shop"])
def features(request):
    return movielens_features() if request.param == "movielens" else shop_features()


def profiles(features, n_users: int, seed: int) -> np.ndarray:
    """Users' profiles as the content model builds them: recency-weighted sums of a few items' rows."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_users, features.shape[1]), np.float32)
    for r in range(n_users):
        items = rng.choice(features.shape[0], rng.integers(1, 20), replace=False)
        out[r] = (rng.uniform(0.1, 1, len(items)).astype(np.float32) @ features[items]).ravel()
    return out


def reference(features, p: np.ndarray, k: int, exclude, allowed):
    """Every item's score (`Content.score`'s product) sorted, ties by position: the serving models' `select`."""
    return select(np.asarray(features @ p[:, None], dtype=np.float32).ravel(), k, exclude, allowed)


@pytest.mark.parametrize("block", [4, 256])
@pytest.mark.parametrize("k", [1, 50])
def test_the_top_k_is_that_of_sorting_every_score(features, block, k):
    index = ContentIndex(features, block=block)
    rng = np.random.default_rng(k + block)
    users = profiles(features, 24, seed=k)
    n = features.shape[0]
    exclude = [rng.choice(n, rng.integers(0, 30), replace=False) for _ in users]
    allowed = [None if r % 3 else rng.random(n) < (0.3 if r % 2 else 0.01) for r in range(len(users))]
    got = index.top_k(users, k, exclude, allowed)
    for p, ex, al, (idx, val) in zip(users, exclude, allowed, got, strict=True):
        want_idx, want_val = reference(features, p, k, ex, al)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(val, want_val)  # bit for bit: the dense path's own float32 values


def test_scores_are_the_dense_products_bit_for_bit(features):
    index = ContentIndex(features)
    items = np.random.default_rng(0).choice(features.shape[0], 500)
    for p in profiles(features, 10, seed=3):
        dense = np.asarray(features @ p[:, None], dtype=np.float32).ravel()
        np.testing.assert_array_equal(index.scores(p, items), dense[items])


def test_repeated_rows_are_kept_once_and_the_walk_skips_blocks():
    features = shop_features()
    index = ContentIndex(features, block=4)
    assert index.n_rows < features.shape[0] / 5  # category × price band: far fewer distinct rows than items
    read = []
    for p in profiles(features, 20, seed=5):
        index.top_k(p[None, :], 10, [None], [None])
        read.append(index.last_rows_read)
    assert np.median(read) < index.n_rows / 2  # the bound stopped the walk before half the rows
