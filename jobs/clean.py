"""clean: bronze snapshot -> silver interactions (validated, deduplicated, pseudonymised, bots dropped).

Silver is recomputed in full from an immutable bronze snapshot (the batch view of
the lambda architecture), so late events simply take their place by event time
and the job is idempotent: the same bronze version always gives the same silver.
The snapshot is read with Delta's `versionAsOf`, and silver is overwritten in one
Delta commit carrying the transaction id `clean:bronze_events` = the bronze version:
a retry of a run that already committed (or a run on an older bronze version than
silver already holds, which would bring back rows erased since) writes nothing.

    spark-submit jobs/clean.py [--bronze-version N]
    python -m jobs.clean [--bronze-version N]
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import typer
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from jobs.common import run_cli, setup_logging, spark_session, timed
from recsys.contracts.events import ITEM_UPDATES
from recsys.contracts.handoffs import LATE_AFTER_S, CleanReport
from recsys.contracts.tables import SILVER_SCHEMA, Tables
from recsys.io import lake
from recsys.privacy import PSEUDONYM_RE, pseudonymise
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.clean")
# Why a bronze row is not in silver. Item updates (availability) are events but not interactions: counted apart.
REASONS = ("invalid", "item_update", "type", "ts_range")
TXN_APP_ID = "clean:bronze_events"  # Delta transaction id of clean's silver writes; its version = bronze's


def clean(spark: SparkSession, bronze_version: int | None = None, settings: Settings | None = None) -> CleanReport:
    s = settings or get_settings()
    bronze_path = Tables.path(Tables.BRONZE_EVENTS, s)
    version = bronze_version if bronze_version is not None else lake.version(bronze_path)
    if version is None:
        raise lake.LakeError(f"no bronze table at {bronze_path}: run the archiver (or a backfill) first")
    report = CleanReport(bronze_version=version)
    tagged = _tag_reasons(lake.spark_read(spark, bronze_path, version), s)
    _tally_bronze(tagged, report)

    valid = tagged.filter(F.col("_reason").isNull()).drop("_reason")
    if report.pseudonymised_here:
        valid = _pseudonymise(valid, s)
    unique = _deduplicate(valid).persist(StorageLevel.MEMORY_AND_DISK)
    n_unique = unique.count()
    bots = _bot_users(unique, s.bot_max_events_per_minute).cache()
    report.bot_users = bots.count()
    kept = unique.join(F.broadcast(bots), "user_id", "left_anti")
    late = F.col("ingested_at").cast("long") - F.col("ts").cast("long") > LATE_AFTER_S
    totals = kept.agg(F.count(F.lit(1)), F.sum(late.cast("int"))).first()
    assert totals is not None  # an aggregate without grouping is one row
    report.rows_out, report.late_events = int(totals[0]), int(totals[1] or 0)
    n_valid = report.rows_in - sum(report.dropped.values())
    report.dropped.update({"duplicate": n_valid - n_unique, "bot": n_unique - report.rows_out})

    silver = kept.withColumn("weight", _weight(s)).select(*SILVER_SCHEMA.names)
    report.silver_version = lake.spark_write(
        silver,
        Tables.path(Tables.SILVER_INTERACTIONS, s),
        mode="overwrite",
        txns={TXN_APP_ID: version},
        metadata={"job": "clean", "bronze_version": version, "report": report.model_dump_json()},
        writer="clean",
    )
    unique.unpersist()
    return report


def _tag_reasons(bronze: DataFrame, s: Settings) -> DataFrame:
    """Add `_reason`: why a row cannot be used (first reason wins), or null for a usable row."""
    missing = F.col("event_id").isNull() | F.col("user_id").isNull() | F.col("item_id").isNull() | F.col("ts").isNull()
    unknown_type = ~F.col("event_type").isin(list(s.event_weights))
    too_old = F.year("ts") < s.min_event_year
    # Judged against arrival, not against now: a replayed old stream is not "from the future".
    from_future = F.col("ts") > F.col("ingested_at") + F.expr(f"INTERVAL {s.max_future_skew_s} SECONDS")
    reason = (
        F.when(missing, "invalid")
        .when(F.col("event_type").isin(list(ITEM_UPDATES)), "item_update")
        .when(unknown_type, "type")
        .when(too_old | from_future, "ts_range")
        .otherwise(F.lit(None).cast("string"))
    )
    return bronze.withColumn("_reason", reason)


def _tally_bronze(tagged: DataFrame, report: CleanReport) -> None:
    """One pass over bronze: rows, rejections per reason, raw user ids, and the next Kafka offset per partition."""
    raw_id = F.col("_reason").isNull() & ~F.col("user_id").rlike(PSEUDONYM_RE.pattern)
    per_partition = (
        tagged.groupBy("kafka_partition")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.max("kafka_offset").alias("max_offset"),
            F.sum(raw_id.cast("int")).alias("raw_ids"),
            *(F.sum((F.col("_reason") == r).cast("int")).alias(r) for r in REASONS),
        )
        .collect()
    )
    report.rows_in = sum(r["rows"] for r in per_partition)
    report.pseudonymised_here = sum(r["raw_ids"] or 0 for r in per_partition)
    report.dropped = {reason: sum(r[reason] or 0 for r in per_partition) for reason in REASONS}
    # Backfilled rows (partition -1) did not come through Kafka: they cover no offsets.
    report.kafka_offsets = {
        int(r["kafka_partition"]): int(r["max_offset"]) + 1 for r in per_partition if r["kafka_partition"] >= 0
    }


def _pseudonymise(df: DataFrame, s: Settings) -> DataFrame:
    """Pseudonymise the user ids that are not pseudonyms yet (events that bypassed our producers)."""
    key = s.pseudonym_key_bytes()

    @F.pandas_udf("string")  # type: ignore[call-overload]  # pyspark's stub lacks the type-hinted form
    def hmac_ids(ids: pd.Series) -> pd.Series:
        return ids.map(lambda u: pseudonymise(u, key))  # pseudonyms map to themselves

    return df.withColumn("user_id", hmac_ids("user_id"))


def _deduplicate(df: DataFrame) -> DataFrame:
    """One row per event_id: the first that arrived (lowest partition/offset, then earliest ingestion)."""
    first = Window.partitionBy("event_id").orderBy("ingested_at", "kafka_partition", "kafka_offset")
    return df.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")


def _bot_users(df: DataFrame, max_per_minute: int) -> DataFrame:
    """Users who ever sent more than `max_per_minute` events within one calendar minute."""
    per_minute = df.groupBy("user_id", F.date_trunc("minute", "ts").alias("minute")).count()
    return per_minute.filter(F.col("count") > max_per_minute).select("user_id").distinct()


def _weight(s: Settings) -> Column:
    mapping = F.create_map(*[x for k, w in s.event_weights.items() for x in (F.lit(k), F.lit(float(w)))])
    return mapping[F.col("event_type")]


def main(bronze_version: int = typer.Option(None, help="Bronze table version to clean (default: latest).")) -> None:
    """Clean a bronze snapshot into the silver interactions table and print a data-quality summary."""
    setup_logging()
    spark = spark_session("clean")
    with timed("clean"):
        report = clean(spark, bronze_version)
    print(report.summary())
    print(json.dumps({"silver_version": report.silver_version, "rows_out": report.rows_out}))
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
