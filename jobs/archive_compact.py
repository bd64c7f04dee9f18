"""archive-compact: make bronze cover everything in `events` up to now, finish erasures, compact the tables.

The archiver normally runs all the time; this nightly Spark job drains what it has
not written yet (exactly once, so it is harmless when the archiver is running; the
drain's delta-rs appends hold bronze's writer lock per commit, like the archiver's),
completes the forget requests still pending (recsys.erasure: Delta DELETE on silver,
VACUUM), then compacts bronze and silver: Delta OPTIMIZE merges the day's many small
files into few large ones, the log is checkpointed, and VACUUM removes files older
than the retention (also those of Spark writes that died before their commit). Each
table's compaction holds its writer lock throughout (recsys.io.lake), so a running
archiver's next append waits for it and then commits at the next version.

    spark-submit jobs/archive_compact.py [--no-drain]
    python -m jobs.archive_compact [--no-drain]
"""

from __future__ import annotations

import json
import logging

import typer
from pyspark.sql import SparkSession

from jobs.archiver import IMPRESSIONS, Archiver
from jobs.common import run_cli, setup_logging, spark_session, timed
from recsys import erasure
from recsys.contracts.tables import Tables
from recsys.io import lake
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.archive_compact")
TARGET_FILE_BYTES = 128 * 1024 * 1024


def archive_compact(spark: SparkSession, drain: bool = True, settings: Settings | None = None) -> dict:
    s = settings or get_settings()
    result: dict = {}
    if drain:
        with timed("drain events into bronze"):
            archiver = Archiver(s)
            try:
                result["archived"] = archiver.run(until_caught_up=True).archived
            finally:
                archiver.close()
        with timed("drain impressions"):
            archiver = Archiver(s, stream=IMPRESSIONS)
            try:
                result["impressions_archived"] = archiver.run(until_caught_up=True).archived
            finally:
                archiver.close()
    # The archiver has now passed every FORGET marker put on `events` so far: finish what is still pending.
    with timed("complete pending erasures"):
        result["forget"] = erasure.complete_pending(s, spark=spark)
    for name in (Tables.BRONZE_EVENTS, Tables.SILVER_INTERACTIONS, Tables.IMPRESSIONS):
        path = Tables.path(name, s)
        if lake.exists(path):
            with timed(f"compact {name}"):
                result[name] = lake.compact(path, TARGET_FILE_BYTES, s.vacuum_retention_hours, spark=spark)
    return result


def main(drain: bool = typer.Option(True, "--drain/--no-drain", help="Archive what is in `events` first.")) -> None:
    """Drain the events topic into bronze, complete pending erasures, then compact and vacuum the tables."""
    setup_logging()
    spark = spark_session("archive_compact")
    print(json.dumps(archive_compact(spark, drain), default=str))
    spark.stop()


if __name__ == "__main__":
    run_cli(main)
