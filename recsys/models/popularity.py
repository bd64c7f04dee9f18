"""Popularity: the same list for everyone, items ranked by how many distinct users touched them.

The baseline every other model must beat, and the answer when nothing is known about a user.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from recsys.data.inputs import Dataset, NewItems, UserContext
from recsys.models.base import AnyParams, Params, Recommender
from recsys.models.capabilities import with_new_items

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class PopularityParams(Params):
    pass


class Popularity(Recommender):
    name = "popularity"
    Params = PopularityParams

    def __init__(self, params: PopularityParams | None = None) -> None:
        super().__init__(params)
        self.counts = np.zeros(0, np.float32)

    def fit(self, data: Dataset, spark: SparkSession | None = None) -> None:
        self.counts = data.popularity()
        self.n_items = data.n_items

    def score(self, users: Sequence[UserContext], new: NewItems | None = None) -> np.ndarray:
        # Row-major: astype keeps a broadcast's layout, which is column-major, and every reader goes by rows.
        scores = np.broadcast_to(self.counts, (len(users), self.n_items)).astype(np.float32, order="C")
        return with_new_items(self, users, scores, new)

    def save(self, directory: Path) -> dict[str, str]:
        np.save(directory / "popularity_counts.npy", self.counts)
        return {"popularity_counts": "popularity_counts.npy"}

    @classmethod
    def load(cls, directory: Path, params: AnyParams, data: Dataset) -> Popularity:
        model = cls(cast(PopularityParams, params))
        model.counts = np.load(directory / "popularity_counts.npy")
        model.n_items = data.n_items
        return model
