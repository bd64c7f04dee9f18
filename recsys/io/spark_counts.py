"""Item × item counts summed by Spark: each task counts its share of the log with the model's own function.

A count such as co-occurrence or transitions is a sum over independent units (a user's
items, a sequence's pairs), so the log is cut into parts of whole units, each part is
counted by a Spark task with exactly the function the driver fit uses (the math stays in
the model's file), and Spark sums the (row, col, value) pieces by (row, col). What comes
back to the driver is the counted matrix, not the pairs: the driver holds O(nnz of the
result) instead of every pair, and the pairs are spread over the executors.

Used by a model's `fit(data, spark)` when a session is given and the log has at least
`spark_count_min_events` events (below that, shipping the log to Spark costs more than
counting it in numpy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from recsys.settings import get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# A part's counter: its rows of the log (in log order) -> the pieces (row, col, value) of its matrix.
Counter = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray, np.ndarray]]
PIECES = "row int, col int, value double"
ORDER = "_order"
PART = "_part"


def use_spark(spark: SparkSession | None, n_events: int) -> bool:
    """Whether a fit should count with Spark: a session is given and the log is large enough to pay for it."""
    return spark is not None and n_events >= get_settings().spark_count_min_events


def summed(
    spark: SparkSession, columns: Mapping[str, np.ndarray], unit: np.ndarray, count: Counter, shape: tuple[int, int]
) -> sp.csr_matrix:
    """Σ over parts of `count(part)` as a CSR matrix (float64, duplicates summed, zeros removed).

    `columns` are the log's columns (equal lengths, log order), `unit` a nondecreasing id per row: a unit
    (a user, a sequence) never spans two parts, so every pair the counter forms lies inside one part.
    """
    n_parts = max(1, spark.sparkContext.defaultParallelism * 2)
    frame = pa.table(
        {
            **columns,
            ORDER: np.arange(len(unit), dtype=np.int64),
            PART: (np.asarray(unit, np.int64) % n_parts).astype(np.int32),
        }
    )
    events = spark.createDataFrame(frame.to_pandas())

    def pieces(part: pd.DataFrame) -> pd.DataFrame:
        rows, cols, vals = count(part.sort_values(ORDER, kind="stable").reset_index(drop=True))
        return pd.DataFrame(
            {
                "row": np.asarray(rows, np.int32),
                "col": np.asarray(cols, np.int32),
                "value": np.asarray(vals, np.float64),
            }
        )

    totals = events.groupBy(PART).applyInPandas(pieces, PIECES).groupBy("row", "col").sum("value")
    out = totals.toArrow()
    matrix = sp.csr_matrix(
        (out.column(2).to_numpy(), (out.column(0).to_numpy(), out.column(1).to_numpy())),
        shape=shape,
        dtype=np.float64,
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix
