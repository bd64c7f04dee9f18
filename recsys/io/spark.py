"""The one place that builds a SparkSession, for jobs and tests alike.

Locally it is `local[*]` bound to 127.0.0.1 with the UI off; under `spark-submit`
the master and resources come from the command line and we only add what every
job needs (UTC, parquet timestamps Delta understands, loopback binding when local).
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from recsys.settings import Settings, get_settings


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
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**spark_conf(s), **extra_conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def spark_conf(s: Settings) -> dict[str, str]:
    conf = {
        "spark.sql.session.timeZone": "UTC",
        # Spark's default INT96 timestamps are not valid in Delta tables.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.shuffle.partitions": str(s.spark_shuffle_partitions),
        "spark.ui.enabled": str(s.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Staging folders are committed by name; Spark's _SUCCESS marker is not needed.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
    }
    if s.spark_driver_host:  # applies under spark-submit too: the SparkContext is not created yet
        conf["spark.driver.host"] = s.spark_driver_host
        conf["spark.driver.bindAddress"] = s.spark_driver_host
    if not under_spark_submit():  # spark-submit owns the master and the driver JVM's memory
        conf["spark.master"] = s.spark_master
        conf["spark.driver.memory"] = s.spark_driver_memory
    if s.spark_delta_jars:
        conf["spark.sql.extensions"] = "io.delta.sql.DeltaSparkSessionExtension"
        conf["spark.sql.catalog.spark_catalog"] = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    return conf
