"""train: silver snapshot -> a Dataset -> any recommender's batch fit -> a candidate model artifact.

Spark reads the snapshot (a given Delta version) and projects the columns every
recommender needs; the events are then collected as Arrow columns into a `Dataset`
(r_ui = Σ event weights, optionally time-decayed; the event-type bits; the ordered
event log; the catalogue's attributes), because the artifact carries the training
data (the speed layer updates users against their whole history) and because every
single-machine recommender trains from it. Spark's own ALS trains on Spark.

    spark-submit jobs/train.py --model-version m2026... [--model spark_als]
"""

from __future__ import annotations

import json
import logging
import time

import typer
from pyspark.sql import SparkSession

from jobs.common import blas_in_use, record_in_registry, run_cli, setup_logging, spark_session, timed
from recsys import protocol, registry
from recsys.contracts.handoffs import CleanReport
from recsys.contracts.tables import Tables
from recsys.data import catalog, datasets
from recsys.data.inputs import Dataset
from recsys.io import lake, model_store
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.train")


def silver_dataset(spark: SparkSession, version: int, s: Settings) -> Dataset:
    """The snapshot's events as a Dataset, items of the catalogue included (content models can rank them cold)."""
    silver = lake.spark_read(spark, Tables.path(Tables.SILVER_INTERACTIONS, s), version)
    columns = ["user_id", "item_id", "unix_millis(ts) as ts_ms", "event_type", "weight"]
    has_session = "session_id" in silver.columns
    table = silver.selectExpr(*columns, *(["session_id"] if has_session else [])).toArrow()
    items = catalog.attributes(s)
    item_ids = datasets.sorted_ids(table.column("item_id"))
    if items:
        item_ids = datasets.sorted_ids(list(set(item_ids.tolist()) | set(items)))
    data, dropped = datasets.build(
        table.column("user_id"),
        table.column("item_id"),
        table.column("ts_ms").to_numpy(),
        table.column("event_type"),
        table.column("weight").to_numpy(),
        list(s.event_weights),
        session=table.column("session_id") if has_session else None,
        item_ids=item_ids,
        items=items or None,
        half_life_days=s.decay_half_life_days,
    )
    if dropped:
        log.warning("%d silver rows have an event type the settings no longer weigh; left out", dropped)
    return data


def train(
    spark: SparkSession,
    model_version: str,
    model_name: str | None = None,
    silver_version: int | None = None,
    settings: Settings | None = None,
    overrides: dict | None = None,
) -> model_store.Location:
    s = settings or get_settings()
    name = model_name or s.model
    model = registry.create(name, s, overrides)
    silver_path = Tables.path(Tables.SILVER_INTERACTIONS, s)
    version = silver_version if silver_version is not None else lake.version(silver_path)
    if version is None:
        raise lake.LakeError(f"no silver table at {silver_path}: run the clean job first")

    with timed("read the silver snapshot"):
        data = silver_dataset(spark, version, s)
    if data.strengths.nnz == 0:
        raise ValueError(f"silver v{version} holds no interactions; nothing to train on")
    log.info(
        "%d users x %d items, %d interactions, %d events", *data.strengths.shape, data.strengths.nnz, len(data.events)
    )
    started = time.monotonic()
    with timed(f"fit {name} {model.params.model_dump()}"):
        model.fit(data, spark)
    fit_seconds = time.monotonic() - started

    report = CleanReport.from_commit(lake.commit_metadata(silver_path, version))
    manifest = model_store.build_manifest(
        model,
        data,
        model_version,
        silver_table_version=version,
        kafka_offsets=report.kafka_offsets,
        fit_seconds=round(fit_seconds, 2),
    )
    if name == "spark_als":
        manifest.details["blas"] = blas_in_use(spark)
    artifact = model_store.ModelArtifact(manifest, data, model)
    path = model_store.save_candidate(artifact, s)
    record_in_registry(model_version, "trained", engine=name, silver_version=version, path=str(path), settings=s)
    return path


def main(
    model_version: str = typer.Option(None, help="Version name (default: from the current time)."),
    model: str = typer.Option(None, help=f"One of {', '.join(registry.names())} (default: RECSYS_MODEL)."),
    silver_version: int = typer.Option(None, help="Silver table version (default: latest)."),
    params: str = typer.Option("{}", help="Hyper-parameters over the settings' ones, as JSON: '{\"rank\": 32}'."),
) -> None:
    """Train a candidate model from the silver table."""
    setup_logging()
    settings = get_settings()
    overrides = json.loads(params or "{}")
    spark = spark_session("train", settings)
    version = model_version or protocol.new_version(model=model or settings.model)
    path = train(spark, version, model, silver_version, settings, overrides)
    print(json.dumps({"candidate": str(path)}))
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
