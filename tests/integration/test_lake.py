"""The lake on real Delta tables on disk, read and written by delta-rs and by real Spark."""

import multiprocessing as mp
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from recsys.io import lake

pytestmark = pytest.mark.integration


def rows(start: int, n: int, writer: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "writer": pa.array([writer] * n, pa.int32()),
            "ts": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def test_write_append_and_read_any_version(table_path):
    assert lake.version(table_path) is None
    assert lake.write(table_path, rows(0, 3)) == 0
    assert lake.write(table_path, rows(3, 2)) == 1
    assert lake.read(table_path).num_rows == 5
    assert sorted(lake.read(table_path, version=0)["id"].to_pylist()) == [0, 1, 2]
    assert lake.write(table_path, rows(100, 1), mode="overwrite") == 2
    assert lake.read(table_path)["id"].to_pylist() == [100]
    assert lake.read(table_path, version=1).num_rows == 5


def test_missing_table_and_version_give_clear_errors(table_path):
    with pytest.raises(lake.LakeError, match="no Delta table"):
        lake.read(table_path)
    lake.write(table_path, rows(0, 1))
    with pytest.raises(lake.LakeError, match="no version 7"):
        lake.read(table_path, version=7)


def test_app_transaction_and_metadata_are_stored_in_the_same_commit(table_path):
    assert lake.committed_app_version(table_path, "archiver") is None
    v = lake.write(table_path, rows(0, 2), txns={"archiver": 41, "archiver-p1": 7}, metadata={"offsets": {"0": 12}})
    assert lake.committed_app_version(table_path, "archiver") == 41
    assert lake.committed_app_version(table_path, "archiver-p1") == 7
    assert lake.committed_app_version(table_path, "someone-else") is None
    assert lake.commit_metadata(table_path, v)["offsets"] == '{"0": 12}'
    lake.write(table_path, rows(2, 1), txns={"archiver": 42})
    assert lake.committed_app_version(table_path, "archiver") == 42
    assert lake.committed_app_version(table_path, "archiver-p1") == 7


def _append_many(path: str, writer: int, batches: int, size: int) -> None:
    for b in range(batches):
        lake.write(path, rows(writer * 1_000_000 + b * size, size, writer))


@pytest.mark.reliability
def test_concurrent_writers_each_get_whole_commits(table_path):
    lake.write(table_path, rows(0, 0))
    writers, batches, size = 4, 5, 50
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(table_path), w, batches, size)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert lake.version(table_path) == writers * batches
    ids = lake.read(table_path)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == writers * batches * size
    # Every version adds exactly one whole batch: no commit holds part of another's.
    for v in range(1, writers * batches + 1):
        assert lake.read(table_path, version=v).num_rows == v * size


def test_spark_reads_a_snapshot_version(spark, table_path):
    lake.write(table_path, rows(0, 10))
    lake.write(table_path, rows(10, 5))
    assert lake.spark_read(spark, table_path).count() == 15
    old = lake.spark_read(spark, table_path, version=0)
    assert old.count() == 10
    assert dict(old.dtypes)["ts"] == "timestamp"


def test_spark_write_is_one_commit_that_delta_rs_reads(spark, table_path):
    df = spark.range(1000).selectExpr("id", "cast(id % 7 as int) as writer", "current_timestamp() as ts")
    v0 = lake.spark_write(df.repartition(4), table_path, txns={"job": 1}, metadata={"job": "test", "n": {"a": 1}})
    assert v0 == 0
    table = lake.read(table_path)
    assert table.num_rows == 1000
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    v1 = lake.spark_write(df.limit(10), table_path, txns={"job": 2})
    assert v1 == 1 and lake.read(table_path).num_rows == 1010
    assert lake.committed_app_version(table_path, "job") == 2
    assert lake.spark_write(df.limit(3), table_path, mode="overwrite") == 2
    assert lake.read(table_path).num_rows == 3 and lake.read(table_path, version=v1).num_rows == 1010
    # Both engines' commits store metadata the same way (delta-spark in its userMetadata).
    assert lake.commit_metadata(table_path, v0) == {"job": "test", "n": '{"a": 1}'}
    assert lake.commit_metadata(table_path, 2) == lake.commit_metadata(table_path, v0)  # v2 stored none


def test_spark_write_with_a_transaction_id_is_idempotent(spark, table_path):
    """Delta's txnAppId/txnVersion: a retry of a committed write, or an older one, writes nothing."""
    df = spark.range(10).selectExpr("id", "cast(0 as int) as writer", "current_timestamp() as ts")
    assert lake.spark_write(df, table_path, txns={"clean": 5}) == 0
    assert lake.spark_write(df, table_path, txns={"clean": 5}) == 0  # the retry
    assert lake.spark_write(df, table_path, mode="overwrite", txns={"clean": 4}) == 0  # an older snapshot
    assert lake.read(table_path).num_rows == 10 and lake.committed_app_version(table_path, "clean") == 5
    assert lake.spark_write(df.limit(2), table_path, mode="overwrite", txns={"clean": 6}) == 1
    assert lake.read(table_path).num_rows == 2 and lake.committed_app_version(table_path, "clean") == 6
    with pytest.raises(lake.LakeError, match="one"):
        lake.spark_write(df, table_path, txns={"a": 1, "b": 1})


def test_empty_spark_result_still_commits(spark, table_path):
    df = spark.range(5).selectExpr("id", "cast(0 as int) as writer", "current_timestamp() as ts")
    lake.spark_write(df, table_path)
    assert lake.spark_write(df.limit(0), table_path, txns={"job": 9}) == 1
    assert lake.read(table_path).num_rows == 5
    assert lake.committed_app_version(table_path, "job") == 9


def data_files(path) -> set[str]:
    return {p.name for p in path.glob("*.parquet")}


@pytest.mark.reliability
def test_spark_job_failing_mid_write_leaves_no_visible_trace(spark, table_path):
    from pyspark.sql.functions import udf

    lake.write(table_path, rows(0, 10))
    committed = data_files(table_path)

    @udf("long")
    def explode_late(i):
        if i == 9_000:
            raise RuntimeError("simulated crash in the middle of the write")
        return i

    # Several tasks finish and write their files before one fails.
    df = spark.range(10_000, numPartitions=8).select(explode_late("id").alias("id"))
    df = df.selectExpr("id", "cast(1 as int) as writer", "current_timestamp() as ts")
    with pytest.raises(Exception, match="simulated crash"):
        lake.spark_write(df, table_path)
    assert lake.version(table_path) == 0
    assert lake.read(table_path).num_rows == 10
    assert lake.spark_read(spark, table_path).count() == 10
    # Delta writes the task files straight into the table folder; no version refers to them, vacuum removes them.
    assert data_files(table_path) > committed
    assert lake.vacuum(table_path, retention_hours=0) >= 1
    assert data_files(table_path) == committed
    assert lake.spark_read(spark, table_path).count() == 10 and lake.read(table_path).num_rows == 10
