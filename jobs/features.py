"""features: user and item feature tables from the silver snapshot and the catalogue, written to Delta.

Item features: the catalogue's attributes (category, tags, title tokens, price and its
band) and behaviour (events by type, distinct users, purchases per view, first and last
event time). User features: events by type, distinct items and sessions, recency (days
from their last event to the snapshot's newest), the median price of what they touched
and its band, and their category shares. Price bands double: band b holds prices in
[2^b, 2^(b+1)).

    spark-submit jobs/features.py [--silver-version N]
"""

from __future__ import annotations

import json
import logging

import typer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.common import run_cli, setup_logging, spark_session, timed
from recsys.contracts.tables import Tables
from recsys.io import lake
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.features")


def price_band(price):
    return F.when(price > 0, F.floor(F.log2(price))).cast("int")


def item_features(silver: DataFrame, catalog: DataFrame | None, event_types: list[str]) -> DataFrame:
    counts = [F.sum((F.col("event_type") == t).cast("long")).alias(f"n_{t}") for t in event_types]
    behaviour = silver.groupBy("item_id").agg(
        *counts,
        F.countDistinct("user_id").alias("n_users"),
        F.min("ts").alias("first_event_at"),
        F.max("ts").alias("last_event_at"),
        F.expr("percentile_approx(price, 0.5)").alias("observed_price"),
    )
    if "purchase" in event_types and "view" in event_types:
        per_view = F.col("n_purchase") / F.greatest(F.col("n_view"), F.lit(1))
        behaviour = behaviour.withColumn("purchases_per_view", per_view)
    if catalog is None:
        out = behaviour.withColumn("price", F.col("observed_price"))
        for column in ("title", "category", "tags"):
            out = out.withColumn(column, F.lit(None).cast("string"))
    else:
        out = catalog.join(behaviour, "item_id", "full_outer")
        out = out.withColumn("price", F.coalesce(F.col("price"), F.col("observed_price")))
    words = F.filter(F.split(F.lower(F.coalesce(F.col("title"), F.lit(""))), "[^a-z0-9]+"), lambda w: F.length(w) > 2)
    return (
        out.drop("observed_price")
        .withColumn("title_tokens", words)
        .withColumn("price_band", price_band(F.col("price")))
        .fillna(0, subset=[c for c in out.columns if c.startswith("n_")])
    )


def user_features(silver: DataFrame, catalog: DataFrame | None, event_types: list[str]) -> DataFrame:
    row = silver.agg(F.max("ts")).first()
    assert row is not None  # an aggregate without grouping is one row
    newest = row[0]
    counts = [F.sum((F.col("event_type") == t).cast("long")).alias(f"n_{t}") for t in event_types]
    priced = silver
    if catalog is not None:
        listed = catalog.select("item_id", F.col("price").alias("list_price"), "category")
        priced = silver.join(listed, "item_id", "left")
        priced = priced.withColumn("price", F.coalesce(F.col("price"), F.col("list_price")))
    else:
        priced = priced.withColumn("category", F.lit(None).cast("string"))
    base = priced.groupBy("user_id").agg(
        *counts,
        F.countDistinct("item_id").alias("n_items"),
        F.countDistinct("session_id").alias("n_sessions"),
        F.min("ts").alias("first_event_at"),
        F.max("ts").alias("last_event_at"),
        F.expr("percentile_approx(price, 0.5)").alias("median_price"),
    )
    base = base.withColumn(
        "recency_days", (F.lit(newest).cast("double") - F.col("last_event_at").cast("double")) / 86_400.0
    ).withColumn("price_band", price_band(F.col("median_price")))
    per_category = (
        priced.where(F.col("category").isNotNull())
        .groupBy("user_id", "category")
        .count()
        .withColumn("share", F.col("count") / F.sum("count").over(_by_user()))
        .groupBy("user_id")
        .agg(F.map_from_entries(F.collect_list(F.struct("category", "share"))).alias("category_shares"))
    )
    return base.join(per_category, "user_id", "left")


def _by_user():
    from pyspark.sql import Window

    return Window.partitionBy("user_id")


def build(spark: SparkSession, silver_version: int | None = None, settings: Settings | None = None) -> dict:
    """Write both tables from one silver snapshot. Returns the row counts and table versions."""
    s = settings or get_settings()
    silver_path = Tables.path(Tables.SILVER_INTERACTIONS, s)
    version = silver_version if silver_version is not None else lake.version(silver_path)
    if version is None:
        raise lake.LakeError(f"no silver table at {silver_path}: run the clean job first")
    silver = lake.spark_read(spark, silver_path, version)
    for column, kind in (("session_id", "string"), ("price", "double")):
        if column not in silver.columns:  # silver written before these columns were kept
            silver = silver.withColumn(column, F.lit(None).cast(kind))
    catalog_path = Tables.path(Tables.CATALOG, s)
    catalog = lake.spark_read(spark, catalog_path) if lake.exists(catalog_path) else None
    types = list(s.event_weights)
    out = {}
    meta = {"job": "features", "silver_version": version}
    for name, frame in ((Tables.ITEM_FEATURES, item_features(silver, catalog, types)),
                        (Tables.USER_FEATURES, user_features(silver, catalog, types))):  # fmt: skip
        with timed(f"write {name}"):
            written = lake.spark_write(frame, Tables.path(name, s), mode="overwrite", metadata=meta)
        out[name] = {"version": written, "rows": lake.read(Tables.path(name, s), columns=[frame.columns[0]]).num_rows}
    return out


def main(silver_version: int = typer.Option(None, help="Silver table version (default: latest).")) -> None:
    """Write the user and item feature tables."""
    setup_logging()
    spark = spark_session("features")
    print(json.dumps(build(spark, silver_version)))
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
