"""Training engines: each fits implicit-feedback ALS on a (users x items) strength matrix.

Both produce the same artifact format; the manifest's `Objective` records which
loss each minimises, so the speed layer folds in with exactly that math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import scipy.sparse as sp

from recsys.contracts.manifest import Objective

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class AlsParams:
    rank: int
    iterations: int
    reg: float
    alpha: float
    seed: int = 42


class Engine(Protocol):
    NAME: str

    def objective(self, params: AlsParams) -> Objective: ...

    def fit(
        self, strengths: sp.csr_matrix, params: AlsParams, spark: SparkSession | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


def get_engine(name: str) -> Engine:
    from jobs.engines import implicit_als, spark_als

    engines = {spark_als.NAME: spark_als, implicit_als.NAME: implicit_als}
    if name not in engines:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(engines)}")
    return engines[name]  # type: ignore[return-value]
