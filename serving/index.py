"""An approximate top-k index for large catalogues: faiss's inverted-file (IVF) index.

Inner-product search is turned into nearest-neighbour search (Bachrach et al. 2014):
each item vector y gets one more coordinate, sqrt(M² − |y|²) with M the largest
norm, and each query x a 0; then |x' − y'|² = |x|² + M² − 2 x·y, so the nearest
item is the one with the highest score. (IVF on raw inner products assigns most
items to the few centroids with large norms and misses most true neighbours.)

Items are clustered into `lists` cells around k-means centroids; a query scores
only the items in the `probes` nearest cells, so the work per request falls from
all items to about probes/lists of them. The price is recall: an item in a cell
that was not probed is missed. `make bench` measures recall@10 against the exact
scan on the same model; `probes == lists` is exact.
"""

from __future__ import annotations

import math

import numpy as np

from recsys.settings import Settings


class ApproximateIndex:
    def __init__(self, index, items: np.ndarray) -> None:
        self._index = index
        self._items = items  # the original vectors: candidates are re-scored exactly
        self.n_items = len(items)

    @classmethod
    def build(cls, item_factors: np.ndarray, s: Settings) -> ApproximateIndex:
        import faiss  # imported here: only processes that use the index pay for it

        faiss.omp_set_num_threads(1)  # one query at a time per process: threads only add overhead
        items = np.ascontiguousarray(item_factors, dtype=np.float32)
        n, rank = items.shape
        norms = np.linalg.norm(items, axis=1)
        extra = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0.0)).astype(np.float32)
        augmented = np.hstack([items, extra[:, None]])
        lists = s.serving_ann_lists or max(1, int(4 * math.sqrt(n)))
        lists = min(lists, max(1, n // 39))  # faiss wants >= 39 training points per centroid
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(rank + 1), rank + 1, lists, faiss.METRIC_L2)
        index.train(augmented)
        index.add(augmented)
        index.nprobe = min(s.serving_ann_probes, lists)
        return cls(index, items)

    @property
    def lists(self) -> int:
        return self._index.nlist

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (item position, exact score) pairs, best first; fewer if the probed cells hold fewer items."""
        k = min(k, self.n_items)
        query = np.append(np.asarray(vector, dtype=np.float32), np.float32(0.0))[None, :]
        _, idx = self._index.search(query, k)
        idx = idx[0][idx[0] >= 0].astype(np.int64)
        scores = self._items[idx] @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")
        return idx[order], scores[order]
