"""Spark MLlib's implicit ALS (Hu, Koren, Volinsky 2008, with ALS-WR regularisation).

Objective: c_ui = 1 + alpha * r_ui, lambda_u = reg * |I(u)| (Spark scales the
regulariser by each user's and item's number of interactions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession

from jobs.engines import AlsParams
from recsys.contracts.manifest import Objective

NAME = "spark_als"


def objective(params: AlsParams) -> Objective:
    return Objective(confidence="one_plus_alpha_r", reg_scaling="count", alpha=params.alpha, reg=params.reg)


def fit(
    strengths: sp.csr_matrix, params: AlsParams, spark: SparkSession | None = None
) -> tuple[np.ndarray, np.ndarray]:
    if spark is None:
        raise ValueError("the spark_als engine needs a SparkSession")
    coo = strengths.tocoo()
    ratings = spark.createDataFrame(
        pd.DataFrame({"u": coo.row.astype(np.int32), "i": coo.col.astype(np.int32), "r": coo.data.astype(np.float32)})
    )
    als = ALS(
        rank=params.rank, maxIter=params.iterations, regParam=params.reg, alpha=params.alpha,
        implicitPrefs=True, userCol="u", itemCol="i", ratingCol="r", seed=params.seed,
        numUserBlocks=_blocks(spark), numItemBlocks=_blocks(spark), coldStartStrategy="drop",
    )  # fmt: skip
    model = als.fit(ratings)
    n_users, n_items = strengths.shape
    return (
        _dense(model.userFactors, n_users, params.rank),
        _dense(model.itemFactors, n_items, params.rank),
    )


def _blocks(spark: SparkSession) -> int:
    return max(2, spark.sparkContext.defaultParallelism)


def _dense(factors, n: int, rank: int) -> np.ndarray:
    """Spark's (id, features) rows as a dense (n, rank) array; ids without a row stay zero."""
    table = factors.toArrow()
    out = np.zeros((n, rank), dtype=np.float32)
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks()
    out[ids] = np.asarray(features.flatten(), dtype=np.float32).reshape(len(ids), rank)
    return out
