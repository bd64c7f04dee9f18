"""Offline quality, side by side in one run: popularity, the `implicit` library, and both of our engines.

MovieLens-100K, the per-user time split of DESIGN.md ("Evaluation protocol"): the
last ceil(test_share · n_u) events of each user are test, items the user saw in
train are filtered out of every list and cannot count as hits. Metrics at k
(settings' eval_k, 10), formulas in recsys/metrics.py:

    P@k = |rec ∩ rel| / k              R@k = |rec ∩ rel| / min(k, |rel|)
    NDCG@k = Σ_i rel_i / log2(i+1) / IDCG    MAP@k = Σ_i P@i · rel_i / min(k, |rel|)

Every ALS variant gets the same budget (rank and iterations from settings); each
engine keeps its own default λ and alpha (jobs/train.py), because the two
objectives scale λ differently (Spark: λ·|I(u)|, implicit: λ) and the confidence
differently (1 + alpha·r vs. alpha·r). `implicit_lib` is the library as it ships
(conjugate-gradient solves) with the implicit engine's λ and alpha, so the only
difference from `implicit_engine` is exact (Cholesky) vs. CG solves.

Hyper-parameters are never tuned here on the test split: this module only measures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from jobs.engines import AlsParams, implicit_als, spark_als
from jobs.train import DEFAULT_ALPHA, DEFAULT_REG
from recsys.evaluation.protocol import (
    EvalSplit,
    evaluate_factors,
    evaluate_popularity,
    load_ml100k_events,
    make_split,
    train_implicit_lib,
)
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MODELS = ("popularity", "implicit_lib", "spark_als", "implicit_engine")
# Quick mode keeps the full budget: MovieLens-100K trains in seconds, and fewer
# iterations would measure a different (under-fitted) model.
QUICK_ITERATIONS: int | None = None


def engine_params(engine: str, s: Settings, quick: bool) -> AlsParams:
    """Shared rank/iterations/seed from settings, the engine's own default λ and alpha from jobs/train.py."""
    iterations = QUICK_ITERATIONS if quick and QUICK_ITERATIONS else s.als_iterations
    return AlsParams(
        rank=s.als_rank, iterations=iterations, reg=DEFAULT_REG[engine], alpha=DEFAULT_ALPHA[engine], seed=s.als_seed
    )


def _timed(fit: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, float]:
    started = time.perf_counter()
    user_factors, item_factors = fit()
    return user_factors, item_factors, time.perf_counter() - started


def _scored(
    split: EvalSplit, k: int, fit: Callable[[], tuple[np.ndarray, np.ndarray]], max_users: int | None
) -> dict[str, float]:
    """Fit, then evaluate the factors on the split; `fit_seconds` is the wall time of the fit alone."""
    user_factors, item_factors, seconds = _timed(fit)
    metrics = evaluate_factors(user_factors, item_factors, split, k=k, max_users=max_users)
    return {**metrics, "fit_seconds": round(seconds, 2)}


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is 0 or not finite (a ratio to nothing says nothing)."""
    if not np.isfinite(b) or b == 0:
        return None
    return float(a / b)


def ratios(results: dict[str, dict], metric: str) -> dict[str, float | None]:
    """Our engines against popularity and against the `implicit` library, on `metric`."""
    out = {}
    for ours in ("spark_als", "implicit_engine"):
        for reference in ("popularity", "implicit_lib"):
            out[f"{ours}_vs_{reference}"] = ratio(results[ours][metric], results[reference][metric])
    return out


def run(quick: bool, spark: SparkSession | None = None, settings: Settings | None = None) -> dict:
    """All four models on one MovieLens-100K time split. Keys per model: the metrics@k, auc, coverage, fit_seconds.

    A local Spark session is created (and stopped afterwards) when none is given.
    """
    s = settings or get_settings()
    k = s.eval_k
    split = make_split(load_ml100k_events(), test_share=s.eval_test_share)
    # 943 users: evaluate all of them, not a sample.
    max_users = None
    spark_params, implicit_params = engine_params("spark_als", s, quick), engine_params("implicit", s, quick)

    results: dict = {"popularity": {**evaluate_popularity(split, k=k, max_users=max_users), "fit_seconds": 0.0}}
    results["implicit_lib"] = _scored(
        split, k,
        lambda: train_implicit_lib(split.train, implicit_params.rank, implicit_params.reg, implicit_params.alpha,
                                   implicit_params.iterations, seed=implicit_params.seed),
        max_users,
    )  # fmt: skip
    results["implicit_engine"] = _scored(
        split, k, lambda: implicit_als.fit(split.train.matrix, implicit_params), max_users
    )
    results["spark_als"] = _spark_scored(split, k, spark_params, spark, max_users)

    ndcg = f"ndcg@{k}"
    return {
        **{name: results[name] for name in MODELS},
        "params": {
            "k": k,
            "ratio_metric": ndcg,
            "test_share": s.eval_test_share,
            "users": split.train.n_users,
            "items": split.train.n_items,
            "train_events": int(split.train.matrix.nnz),
            "test_events": split.n_test_events,
            "spark_als": asdict(spark_params),
            "implicit_engine": asdict(implicit_params),
            "implicit_lib": {**asdict(implicit_params), "solver": "conjugate gradient (implicit's default)"},
        },
        "ratios": ratios(results, ndcg),
    }


def _spark_scored(
    split: EvalSplit, k: int, params: AlsParams, spark: SparkSession | None, max_users: int | None
) -> dict[str, float]:
    """spark_als on a given session, or on a local one made here and stopped after (session start-up not timed)."""
    own = spark is None
    if own:
        from recsys.io.spark import get_spark

        spark = get_spark("bench-quality")
        spark.sparkContext.setLogLevel("ERROR")
    try:
        return _scored(split, k, lambda: spark_als.fit(split.train.matrix, params, spark), max_users)
    finally:
        if own:
            spark.stop()


__all__ = ["MODELS", "engine_params", "ratios", "run"]
