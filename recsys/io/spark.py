"""The one place that builds a SparkSession, for jobs and tests alike, and the one place that says how
Spark gets Delta Lake (delta-spark) onto its classpath.

Locally it is `local[*]` bound to 127.0.0.1 with the UI off; under `spark-submit`
the master and resources come from the command line and we only add what every
job needs (UTC, parquet timestamps Delta understands, loopback binding when local).

Delta is native in every session: the delta-spark jars fetched at set-up
(`python -m infra.jars fetch delta`, from `infra/maven/delta/pom.xml`) go in as
`spark.jars` (local paths: nothing is downloaded at run time, never
`spark.jars.packages`), with Delta's SQL extension and catalog. Every other way
of starting Spark (the DAG's SparkSubmitOperator, `spark-submit` in the tests)
passes the same `delta_conf()`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def under_spark_submit() -> bool:
    """True when spark-submit started this Python process (it already owns the JVM and the master)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(app_name: str, settings: Settings | None = None, **extra_conf: str) -> SparkSession:
    """A SparkSession configured from settings; extra Spark options override the defaults."""
    s = settings or get_settings()
    if s.spark_driver_host:
        # Spark otherwise binds to the eth0 address and advertises it; keep it where settings say.
        os.environ.setdefault("SPARK_LOCAL_IP", s.spark_driver_host)
    # Python workers must run the same interpreter (and virtualenv) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Native BLAS (OpenBLAS) must not start its own threads inside Spark's task threads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if under_spark_submit():
        _check_submitted_with_delta()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in {**spark_conf(s), **extra_conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def delta_jars() -> list[str]:
    """Local paths of the delta-spark jars; raises infra.jars.JarsMissing ("run `make jars`") if not fetched."""
    from infra import jars

    return [str(p) for p in jars.jars("delta")]


def _check_submitted_with_delta() -> None:
    """Under spark-submit the driver's classpath is fixed before this code runs: the jars must be on its
    command line (a `spark.jars` set here would reach the executors, not the driver)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the JVM spark-submit started, with its properties
    if DELTA_EXTENSION not in SparkConf().get("spark.sql.extensions", ""):
        raise RuntimeError(
            "spark-submit was started without Delta Lake: pass `recsys.io.spark.submit_args()` "
            "(--conf spark.jars=<the delta jars>, the Delta extension and catalog), as dags/recsys_nightly.py does"
        )


def submit_args(s: Settings | None = None) -> list[str]:
    """`delta_conf` as spark-submit options."""
    return [arg for key, value in delta_conf(s).items() for arg in ("--conf", f"{key}={value}")]


def delta_conf(s: Settings | None = None) -> dict[str, str]:
    """Spark options that make Delta Lake native: the jars, Delta's SQL extension and catalog, and the table
    defaults that keep every table writable by delta-rs (the archiver's appends, erasure's deletes).

    The same dict goes to a SparkSession builder and, as `--conf`, to spark-submit (which puts `spark.jars`
    on the driver's classpath and ships them to the executors).
    """
    s = s or get_settings()
    return {
        "spark.jars": ",".join(delta_jars()),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        # A Spark DELETE/UPDATE on a table with deletion vectors enabled writes DV files, a reader feature
        # that delta-rs cannot write to: rewrite files instead (tests/integration/test_delta_interop.py).
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
        # The retention is a setting (RECSYS_VACUUM_RETENTION_HOURS); Delta's own floor of 168 h would refuse
        # the shorter ones the tests use.
        "spark.databricks.delta.retentionDurationCheck.enabled": "false",
        # Rebuilding a table's state from its log uses 50 partitions by default: far too many for small tables.
        "spark.databricks.delta.snapshotPartitions": str(s.spark_shuffle_partitions),
        # VACUUM and OPTIMIZE list the table's files with Spark's partition-discovery parallelism, 10,000 tasks
        # by default: on a small table that is ~170,000 tasks (a minute) per VACUUM. Sized like the shuffles.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(s.spark_shuffle_partitions),
    }


def spark_conf(s: Settings) -> dict[str, str]:
    conf = {
        "spark.sql.session.timeZone": "UTC",
        # Spark's default INT96 timestamps are not valid in Delta tables.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.shuffle.partitions": str(s.spark_shuffle_partitions),
        "spark.ui.enabled": str(s.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
        # Hadoop's client asks for 3 replicas whatever the cluster has; the local HDFS has one DataNode.
        "spark.hadoop.dfs.replication": str(s.hdfs_replication),
        **delta_conf(s),
    }
    if under_spark_submit():  # the submitter chose the jars (checked in get_spark)
        del conf["spark.jars"]
    if s.spark_driver_host:  # applies under spark-submit too: the SparkContext is not created yet
        conf["spark.driver.host"] = s.spark_driver_host
        conf["spark.driver.bindAddress"] = s.spark_driver_host
    if not under_spark_submit():  # spark-submit owns the master and the driver JVM's memory
        conf["spark.master"] = s.spark_master
        conf["spark.driver.memory"] = s.spark_driver_memory
    return conf
