"""Business rules on an answer that are not scores: which items a shop can sell, and how many of one category.

Pure logic (no model, no Kafka): `ServingModel` keeps the state and calls these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# A capped answer ranks this many times k candidates before the cap: a few categories filling up rarely empty it;
# what is still missing is topped up from the popular items, capped the same way.
CAP_OVERFETCH = 4


@dataclass(frozen=True)
class Unavailable:
    """The items that cannot be sold now, by id, and their positions in a model of `n_items` items.

    Immutable: the follower swaps in a new one per change, so a request reads one consistent set.
    """

    ids: frozenset[str] = frozenset()

    def changed(self, item_id: str, available: bool) -> Unavailable:
        if available == (item_id not in self.ids):
            return self  # nothing changes (a repeated update)
        return Unavailable(self.ids - {item_id} if available else self.ids | {item_id})

    def positions(self, index: dict[str, int], n_items: int) -> np.ndarray:
        """Positions of the unavailable items this model knows (items it has never seen cannot be answered)."""
        found = [j for item in self.ids if (j := index.get(item)) is not None and j < n_items]
        return np.array(sorted(found), dtype=np.int64)


def capped(categories: Iterable[str | None], cap: int, k: int, counts: dict[str, int]) -> list[int]:
    """Indices of the ranked items to keep, best first: at most `cap` per category and `k` in all.

    `counts` holds how many of each category the answer has already (updated in place). An item without a
    category is not capped: there is no category for it to crowd.
    """
    keep: list[int] = []
    for n, category in enumerate(categories):
        if len(keep) == k:
            break
        if category:
            if counts.get(category, 0) >= cap:
                continue
            counts[category] = counts.get(category, 0) + 1
        keep.append(n)
    return keep


def full(counts: dict[str, int], cap: int) -> list[str]:
    """The categories an answer may take no more of."""
    return [c for c, n in counts.items() if n >= cap]


def union(*parts: np.ndarray | Sequence[int]) -> np.ndarray:
    """The positions of several exclusion lists in one int64 array, as the candidate path takes them."""
    arrays = [np.asarray(p, dtype=np.int64) for p in parts if len(p)]
    if not arrays:
        return np.zeros(0, np.int64)
    return arrays[0] if len(arrays) == 1 else np.unique(np.concatenate(arrays))
