"""train: silver snapshot -> strengths r_ui -> implicit ALS -> a candidate model artifact.

r_ui is the sum of the user's event weights on the item, each optionally decayed
by 0.5 ** (age / half-life), age measured from the newest event in the snapshot.
Spark does the aggregation; the strength matrix is then collected, because the
artifact carries it (the speed layer folds in against each user's whole history)
and because both engines train from it.

    spark-submit jobs/train.py --model-version m2026... [--engine spark_als|implicit]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import typer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import blas_in_use, record_in_registry, run_cli, setup_logging, spark_session, timed
from jobs.engines import AlsParams, get_engine
from recsys import protocol
from recsys.contracts.manifest import ModelManifest
from recsys.contracts.tables import Tables
from recsys.evaluation.protocol import distinct_users_per_item
from recsys.io import lake, model_store
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.train")

# Per-engine defaults, tuned on MovieLens-100K's time split (the two objectives scale lambda differently).
DEFAULT_REG = {"spark_als": 0.1, "implicit": 20.0}
DEFAULT_ALPHA = {"spark_als": 0.3, "implicit": 1.0}


@dataclass
class Strengths:
    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix  # float32 (users x items)
    seen_types: sp.csr_matrix  # int32 (users x items): bit b = event type b was seen (see `event_type_bits`)


def params_from_settings(engine: str, s: Settings) -> AlsParams:
    return AlsParams(
        rank=s.als_rank,
        iterations=s.als_iterations,
        reg=s.als_reg if s.als_reg is not None else DEFAULT_REG[engine],
        alpha=s.als_alpha if s.als_alpha is not None else DEFAULT_ALPHA[engine],
        seed=s.als_seed,
    )


def event_type_bits(event_types: list[str]):
    """A column holding 1 << (position of the row's event type in `event_types`), 0 for others."""
    bit = F.lit(0)
    for b, name in enumerate(event_types):
        bit = F.when(F.col("event_type") == name, F.lit(1 << b)).otherwise(bit)
    return bit


def strengths_frame(silver: DataFrame, half_life_days: float, event_types: list[str]) -> DataFrame:
    """(user_id, item_id, strength, seen_types): summed event weights (time-decayed if a half-life is
    set) and the event types seen, as a bit set over `event_types`."""
    weight = F.col("weight")
    if half_life_days > 0:
        newest = silver.agg(F.max("ts")).first()[0]
        age_days = (F.lit(newest).cast("double") - F.col("ts").cast("double")) / 86_400.0
        weight = weight * F.pow(F.lit(0.5), age_days / half_life_days)
    return silver.groupBy("user_id", "item_id").agg(
        F.sum(weight).cast("float").alias("strength"),
        F.bit_or(event_type_bits(event_types)).cast("int").alias("seen_types"),
    )


def collect_strengths(frame: DataFrame) -> Strengths:
    """The strength matrix on the driver, users and items indexed in sorted id order (deterministic)."""
    table = frame.toArrow()
    df = pd.DataFrame({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
    users, u = np.unique(df["user_id"].to_numpy(dtype=str), return_inverse=True)
    items, i = np.unique(df["item_id"].to_numpy(dtype=str), return_inverse=True)
    shape = (len(users), len(items))
    # (user, item) pairs are unique after the group-by, so both matrices share one sparsity pattern.
    matrix = sp.csr_matrix((df["strength"].to_numpy(np.float32), (u, i)), shape=shape)
    seen = sp.csr_matrix((df["seen_types"].to_numpy(np.int32), (u, i)), shape=shape)
    return Strengths(users, items, matrix, seen)


def train(
    spark: SparkSession,
    model_version: str,
    engine_name: str | None = None,
    silver_version: int | None = None,
    settings: Settings | None = None,
) -> Path:
    s = settings or get_settings()
    engine_name = engine_name or s.als_engine
    engine = get_engine(engine_name)
    params = params_from_settings(engine_name, s)
    silver_path = Tables.path(Tables.SILVER_INTERACTIONS, s)
    version = silver_version if silver_version is not None else lake.version(silver_path)
    if version is None:
        raise lake.LakeError(f"no silver table at {silver_path}: run the clean job first")
    silver = lake.spark_read(spark, silver_path, version)

    with timed("aggregate strengths"):
        event_types = list(s.event_weights)
        strengths = collect_strengths(strengths_frame(silver, s.decay_half_life_days, event_types))
    if strengths.matrix.nnz == 0:
        raise ValueError(f"silver v{version} holds no interactions; nothing to train on")
    log.info("%d users x %d items, %d interactions", *strengths.matrix.shape, strengths.matrix.nnz)
    started = time.monotonic()
    with timed(f"fit {engine_name} rank={params.rank} iterations={params.iterations}"):
        user_factors, item_factors = engine.fit(strengths.matrix, params, spark)
    fit_seconds = time.monotonic() - started

    clean_meta = lake.commit_metadata(silver_path, version)
    report = json.loads(clean_meta.get("report", "{}"))
    manifest = ModelManifest(
        model_version=model_version,
        created_at_ms=int(time.time() * 1000),
        engine=engine_name,
        objective=engine.objective(params),
        rank=params.rank,
        hyperparameters={
            "iterations": params.iterations,
            "reg": params.reg,
            "alpha": params.alpha,
            "seed": params.seed,
            "decay_half_life_days": s.decay_half_life_days,
            "fit_seconds": round(fit_seconds, 2),
            "blas": blas_in_use(spark) if engine_name == "spark_als" else "numpy/implicit",
        },
        n_users=len(strengths.user_ids),
        n_items=len(strengths.item_ids),
        silver_table_version=version,
        kafka_offsets={int(p): int(o) for p, o in report.get("kafka_offsets", {}).items()},
        event_types=event_types,
    )
    artifact = model_store.ModelArtifact(
        manifest=manifest,
        user_ids=strengths.user_ids,
        item_ids=strengths.item_ids,
        user_factors=user_factors,
        item_factors=item_factors,
        interactions=strengths.matrix,
        popularity=distinct_users_per_item(strengths.matrix).astype(np.float32),
        seen_types=strengths.seen_types,
    )
    path = model_store.save(artifact, model_store.candidates_dir(s) / model_version)
    record_in_registry(model_version, "trained", engine=engine_name, silver_version=version, path=str(path), settings=s)
    return path


def main(
    model_version: str = typer.Option(None, help="Version name (default: from the current time)."),
    engine: str = typer.Option(None, help="spark_als or implicit (default: RECSYS_ALS_ENGINE)."),
    silver_version: int = typer.Option(None, help="Silver table version (default: latest)."),
    rank: int = typer.Option(None, help="Override RECSYS_ALS_RANK."),
    iterations: int = typer.Option(None, help="Override RECSYS_ALS_ITERATIONS."),
    reg: float = typer.Option(None, help="Override RECSYS_ALS_REG."),
    alpha: float = typer.Option(None, help="Override RECSYS_ALS_ALPHA."),
) -> None:
    """Train a candidate model from the silver table."""
    setup_logging()
    overrides = {"als_rank": rank, "als_iterations": iterations, "als_reg": reg, "als_alpha": alpha}
    settings = get_settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    spark = spark_session("train", settings)
    path = train(spark, model_version or protocol.new_version(), engine, silver_version, settings)
    print(json.dumps({"candidate": str(path)}))
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
