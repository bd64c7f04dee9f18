"""An approximate top-k index for large catalogues: faiss's inverted-file index on inner product.

Items are clustered into `lists` cells around k-means centroids; a query scores
only the items in the `probes` cells whose centroids score best, so the work per
request falls from all items to about probes/lists of them. The price is recall:
an item in a cell that was not probed is missed. `make bench` measures recall@10
against the exact scan on the same model; `probes == lists` is exact.
"""

from __future__ import annotations

import math

import numpy as np

from recsys.settings import Settings


class ApproximateIndex:
    def __init__(self, index, n_items: int) -> None:
        self._index = index
        self.n_items = n_items

    @classmethod
    def build(cls, item_factors: np.ndarray, s: Settings) -> ApproximateIndex:
        import faiss  # imported here: only processes that use the index pay for it

        items = np.ascontiguousarray(item_factors, dtype=np.float32)
        n, rank = items.shape
        lists = s.serving_ann_lists or max(1, int(4 * math.sqrt(n)))
        lists = min(lists, max(1, n // 39))  # faiss wants >= 39 training points per centroid
        quantizer = faiss.IndexFlatIP(rank)
        index = faiss.IndexIVFFlat(quantizer, rank, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(items)
        index.add(items)
        index.nprobe = min(s.serving_ann_probes, lists)
        return cls(index, n)

    @property
    def lists(self) -> int:
        return self._index.nlist

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (item position, score) pairs, best first; fewer if the probed cells hold fewer items."""
        k = min(k, self.n_items)
        scores, idx = self._index.search(np.asarray(vector, dtype=np.float32)[None, :], k)
        keep = idx[0] >= 0
        return idx[0][keep].astype(np.int64), scores[0][keep]
