"""delta-spark and delta-rs on the same tables, and one writer per table.

Both engines write the lake (recsys.io.lake): Spark jobs with delta-spark, the archiver and
small writers with delta-rs. Each must read what the other wrote, at the same version, with
the same rows, also after OPTIMIZE, VACUUM and a Spark DELETE; delta-rs must still append
after Spark touched a table (no deletion vectors or other features it cannot write). And
since delta-spark's log store on a local disk does not stop a second process committing the
same version, every writer holds the table's writer lock: a second writer waits, or gives up
with a message naming the holder.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from recsys.io import lake

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = pa.schema([("id", pa.int64()), ("user_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC"))])


def batch(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {"id": ids, "user_id": [f"u{i % 7}" for i in ids], "ts": [T0 + timedelta(seconds=i) for i in ids]},
        schema=SCHEMA,
    )


def rs_rows(path, version: int | None = None) -> list[tuple]:
    t = lake.read(path, version)
    return sorted(zip(t["id"].to_pylist(), t["user_id"].to_pylist(), t["ts"].to_pylist(), strict=True))


def spark_rows(spark, path, version: int | None = None) -> list[tuple]:
    rows = lake.spark_read(spark, path, version).collect()
    # Spark hands timestamps back naive, in its session time zone (UTC here).
    return sorted((r["id"], r["user_id"], r["ts"].replace(tzinfo=UTC)) for r in rows)


def assert_engines_agree(spark, path, versions) -> None:
    for v in versions:
        assert spark_rows(spark, path, v) == rs_rows(path, v), f"engines disagree at version {v}"


def assert_delta_rs_can_write(path) -> None:
    """No feature delta-rs cannot write: the table stays at reader 1 / writer 2, no deletion vectors."""
    protocol = lake.open_table(path).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2), protocol
    assert not protocol.reader_features and not protocol.writer_features
    assert lake.open_table(path).metadata().configuration.get("delta.enableDeletionVectors") in (None, "false")


def test_a_table_written_by_delta_rs_reads_the_same_in_spark_at_every_version(spark, table_path):
    for b in range(4):
        lake.write(table_path, batch(b * 100, 100), txns={"archiver:events:0": (b + 1) * 100})
    lake.write(table_path, batch(1_000, 5), mode="overwrite")
    assert_engines_agree(spark, table_path, range(5))
    assert len(spark_rows(spark, table_path, 2)) == 300 and len(spark_rows(spark, table_path)) == 5
    # Spark sees delta-rs's transaction ids (the archiver's offsets) as delta-rs wrote them.
    assert spark.sql(f"DESCRIBE HISTORY delta.`{table_path}`").count() == 5


def test_a_table_written_by_spark_reads_the_same_in_delta_rs_and_takes_its_appends(spark, table_path):
    df = spark.createDataFrame(batch(0, 500).to_pandas())
    lake.spark_write(df.repartition(3), table_path, txns={"clean": 1})
    lake.spark_write(spark.createDataFrame(batch(500, 50).to_pandas()), table_path)
    lake.write(table_path, batch(10_000, 10))  # delta-rs appends to Spark's table
    lake.spark_write(spark.createDataFrame(batch(20_000, 3).to_pandas()), table_path, mode="overwrite")
    assert_engines_agree(spark, table_path, range(4))
    assert [len(rs_rows(table_path, v)) for v in range(4)] == [500, 550, 560, 3]
    assert lake.committed_app_version(table_path, "clean") == 1
    assert_delta_rs_can_write(table_path)


def test_both_engines_agree_after_optimize_checkpoint_and_vacuum(spark, table_path):
    for b in range(12):  # many small files from both engines; Spark checkpoints its commit at version 10
        if b in (0, 5, 10):
            lake.spark_write(spark.createDataFrame(batch(b * 10, 10).to_pandas()), table_path)
        else:
            lake.write(table_path, batch(b * 10, 10))
    assert (table_path / "_delta_log" / f"{10:020d}.checkpoint.parquet").exists()
    before = lake.version(table_path)
    expected = rs_rows(table_path)
    result = lake.compact(table_path, 128 << 20, retention_hours=1_000, spark=spark)  # keep old files: time travel
    assert result["files_removed"] >= 12 and result["files_added"] == 1
    assert_engines_agree(spark, table_path, [0, before, result["version"], None])
    assert rs_rows(table_path) == expected
    lake.vacuum(table_path, retention_hours=0)  # now the replaced small files go (delta-rs's vacuum)
    assert len(list(table_path.glob("*.parquet"))) == 1
    assert spark_rows(spark, table_path) == rs_rows(table_path) == expected
    lake.write(table_path, batch(5_000, 1))  # the archiver goes on appending after compaction
    lake.compact(table_path, 128 << 20, retention_hours=0, spark=spark)  # Spark's VACUUM this time
    assert len(list(table_path.glob("*.parquet"))) == 1
    assert spark_rows(spark, table_path) == rs_rows(table_path) == sorted([*expected, *rs_rows(table_path)[-1:]])
    assert_delta_rs_can_write(table_path)


@pytest.mark.parametrize("created_by", ["delta-rs", "spark"])  # as the archiver creates bronze, clean silver
def test_after_a_spark_delete_delta_rs_reads_and_appends_and_spark_reads_that(spark, table_path, created_by):
    if created_by == "delta-rs":
        lake.write(table_path, batch(0, 70))
        lake.spark_write(spark.createDataFrame(batch(70, 70).to_pandas()), table_path)
    else:
        lake.spark_write(spark.createDataFrame(batch(0, 70).to_pandas()), table_path)
        lake.write(table_path, batch(70, 70))
    deleted = lake.delete(table_path, "user_id = 'u3' AND id < 100", spark=spark)  # Delta's DELETE
    assert deleted == len([i for i in range(100) if i % 7 == 3])
    assert_delta_rs_can_write(table_path)  # files rewritten, no deletion vectors
    after_delete = rs_rows(table_path)
    assert len(after_delete) == 140 - deleted and all(not (u == "u3" and i < 100) for i, u, _ in after_delete)
    assert_engines_agree(spark, table_path, [0, 1, 2])
    lake.write(table_path, batch(1_000, 7))  # delta-rs appends after Spark's DELETE
    assert lake.delete(table_path, "user_id = 'u4'") > 0  # and deletes with delta-rs
    assert_engines_agree(spark, table_path, [3, 4])
    assert lake.vacuum(table_path, 0, spark=spark) >= 2  # the files the deletes replaced
    assert spark_rows(spark, table_path) == rs_rows(table_path)
    assert not [r for r in rs_rows(table_path) if r[1] == "u4"]


# --- one writer per table ---------------------------------------------------------------------
def _hold_lock(path: str, seconds: float, ready, what: str = "test holder") -> None:
    with lake.writer_lock(path, what):
        ready.set()
        time.sleep(seconds)


def _start_holder(path, seconds: float, what: str = "test holder"):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(path), seconds, ready, what))
    proc.start()
    assert ready.wait(60), "the holder never took the lock"
    return proc


def test_a_second_writer_waits_for_the_first_then_commits(table_path):
    lake.write(table_path, batch(0, 1))
    holder = _start_holder(table_path, 3.0)
    started = time.monotonic()
    assert lake.write(table_path, batch(1, 1)) == 1  # waits for the holder, then commits
    waited = time.monotonic() - started
    holder.join(30)
    assert waited >= 2.0, waited
    assert lake.read(table_path).num_rows == 2


def test_a_writer_that_cannot_wait_longer_fails_naming_the_holder(table_path):
    lake.write(table_path, batch(0, 1))
    holder = _start_holder(table_path, 5.0, what="compact")
    try:
        with lake.lock_timeout(0.5), pytest.raises(lake.TableLocked) as failed:
            lake.write(table_path, batch(1, 1), writer="archiver")
    finally:
        holder.join(30)
    message = str(failed.value)
    assert "archiver gave up" in message and f"pid {holder.pid}" in message and "compact" in message, message
    assert "one writer per table" in message
    assert lake.version(table_path) == 0  # nothing written
    assert lake.write(table_path, batch(1, 1)) == 1  # and once the holder is gone it goes through


def test_a_spark_write_waits_for_a_delta_rs_writer(spark, table_path):
    lake.write(table_path, batch(0, 1))
    holder = _start_holder(table_path, 3.0)
    started = time.monotonic()
    lake.spark_write(spark.createDataFrame(batch(1, 1).to_pandas()), table_path)
    holder.join(30)
    assert time.monotonic() - started >= 2.0
    assert lake.version(table_path) == 1


def _archive_like(path: str, commits: int, out) -> None:
    """Append one small batch per commit, as the archiver does, recording when each commit landed."""
    for c in range(commits):
        lake.write(path, batch(100_000 + c * 10, 10), writer="archiver")
        out.put(time.time())
        time.sleep(0.05)


COMMITS = 25


@pytest.mark.reliability
def test_compaction_and_a_running_archiver_cannot_corrupt_each_other(spark, table_path):
    for b in range(20):
        lake.write(table_path, batch(b * 10, 10))
    ctx = mp.get_context("spawn")
    landed = ctx.Queue()
    archiver = ctx.Process(target=_archive_like, args=(str(table_path), COMMITS, landed))
    archiver.start()
    while landed.empty():  # the archiver is committing
        time.sleep(0.05)
    # Compaction holds the table for its whole OPTIMIZE + checkpoint + VACUUM (re-entrant: compact's own lock nests).
    with lake.writer_lock(table_path, "test compaction"):
        held_from = time.time()
        result = lake.compact(table_path, 128 << 20, retention_hours=0, spark=spark)
        held_to = time.time()
    archiver.join(180)
    assert archiver.exitcode == 0
    commit_times = [landed.get() for _ in range(COMMITS)]
    assert not [t for t in commit_times if held_from < t < held_to], "the archiver committed during compaction"
    assert [t for t in commit_times if t >= held_to], "the archiver should have gone on after compaction"
    assert result["files_removed"] > 1
    ids = [r[0] for r in rs_rows(table_path)]
    assert len(ids) == len(set(ids)) == 200 + 10 * COMMITS  # every row once, none lost
    history = lake.open_table(table_path).history()
    assert sorted(e["version"] for e in history) == list(range(lake.version(table_path) + 1))
    assert spark_rows(spark, table_path) == rs_rows(table_path)
    assert_delta_rs_can_write(table_path)
