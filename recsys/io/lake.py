"""The lake: Delta tables on disk, read and written through delta-rs (`deltalake`).

Every write is one atomic Delta commit: readers see the table before it or after
it, never half of it. Spark jobs read a snapshot (a given table version) as a
DataFrame and write their result as new parquet files that become visible only
when one Delta commit adds them; a job that dies before the commit leaves
unreferenced files that `vacuum` removes and no reader ever sees.

Where delta-spark's jars are on Spark's classpath (`RECSYS_SPARK_DELTA_JARS=true`,
a cluster), `spark_read` and `spark_write` use Delta's own Spark data source
instead; the API stays the same.

Exactly-once writers (the archiver) pass `txns={app_id: app_version, ...}`: the pairs
are stored in the same commit as the data (Delta's transaction identifiers), so after
a crash `committed_app_version` says precisely what was written.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

WriteMode = Literal["append", "overwrite"]
STAGING_PREFIX = "_staging-"


class LakeError(RuntimeError):
    """A table cannot be read or written as asked (missing, unsupported feature, bad version)."""


# --- inspection ---------------------------------------------------------------------------
def exists(path: str | Path) -> bool:
    return DeltaTable.is_deltatable(str(path))


def open_table(path: str | Path, version: int | None = None) -> DeltaTable:
    """The table at `path`, at `version` (default: latest). Raises LakeError if absent."""
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError as e:
        raise LakeError(f"no Delta table at {path}") from e
    except Exception as e:  # delta-rs reports a missing version as a generic error
        if version is not None and "version" in str(e).lower():
            raise LakeError(f"table {path} has no version {version}") from e
        raise


def version(path: str | Path) -> int | None:
    """Latest committed version, or None if there is no table yet."""
    return open_table(path).version() if exists(path) else None


def committed_app_version(path: str | Path, app_id: str) -> int | None:
    """The last `app_version` an exactly-once writer committed to this table, or None."""
    return committed_app_versions(path, [app_id])[app_id]


def committed_app_versions(path: str | Path, app_ids: list[str]) -> dict[str, int | None]:
    """`committed_app_version` for several writers, from one read of the table's log."""
    if not exists(path):
        return dict.fromkeys(app_ids)
    table = open_table(path)
    return {app_id: table.transaction_version(app_id) for app_id in app_ids}


def archived_offsets(path: str | Path, topic: str, partitions) -> dict[int, int]:
    """Per partition of `topic`, the next offset the archiver has committed to the table at `path` (0 = none)."""
    from recsys.contracts.tables import Tables

    ids = {p: Tables.archiver_txn_id(topic, p) for p in partitions}
    recorded = committed_app_versions(path, list(ids.values()))
    return {p: recorded[app_id] or 0 for p, app_id in ids.items()}


def commit_metadata(path: str | Path, version: int) -> dict:
    """The custom metadata a writer stored with commit `version`."""
    for entry in open_table(path).history():
        if entry.get("version") == version:
            return {k: v for k, v in entry.items() if k not in _HISTORY_FIELDS}
    raise LakeError(f"table {path} has no version {version}")


_HISTORY_FIELDS = {
    "version", "timestamp", "operation", "operationParameters", "clientVersion",
    "readVersion", "isBlindAppend", "operationMetrics", "engineInfo", "userName",
}  # fmt: skip


# --- reads and writes through Arrow (small data, services, tests) -------------------------
def read(path: str | Path, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
    return open_table(path, version).to_pyarrow_table(columns=columns)


def write(
    path: str | Path,
    data: pa.Table | pa.RecordBatchReader,
    mode: WriteMode = "append",
    *,
    txns: Mapping[str, int] | None = None,
    metadata: Mapping[str, object] | None = None,
) -> int:
    """Append (or overwrite with) `data` in one atomic commit; creates the table if needed.

    Returns the new table version.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_deltalake(
        str(path),
        data,
        mode=mode,
        schema_mode="merge" if mode == "append" else "overwrite",
        commit_properties=_commit_properties(txns, metadata),
    )
    return open_table(path).version()


def _commit_properties(txns: Mapping[str, int] | None, metadata: Mapping[str, object] | None) -> CommitProperties:
    now_ms = int(time.time() * 1000)
    app_txns = [Transaction(app_id=a, version=int(v), last_updated=now_ms) for a, v in (txns or {}).items()]
    custom = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return CommitProperties(custom_metadata=custom or None, app_transactions=app_txns or None)


# --- Spark: read a snapshot as a DataFrame, write a DataFrame as one commit -----------------
def spark_read(spark: SparkSession, path: str | Path, version: int | None = None) -> DataFrame:
    """The table at `version` (default: latest) as a Spark DataFrame."""
    if _delta_spark_enabled(spark):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(str(path))
    table = open_table(path, version)
    _check_plain_parquet(table)
    files = table.file_uris()
    schema = _spark_schema(table)
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*files)


def spark_write(
    df: DataFrame,
    path: str | Path,
    mode: WriteMode = "append",
    *,
    txns: Mapping[str, int] | None = None,
    metadata: Mapping[str, object] | None = None,
) -> int:
    """Write `df` to the table in one atomic Delta commit. Returns the new table version."""
    spark = df.sparkSession
    if _delta_spark_enabled(spark):
        return _spark_write_native(df, path, mode, txns, metadata)
    path = Path(path)
    staging = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    # Spark writes the files where no reader looks; the commit below is what makes them visible.
    df.write.mode("error").parquet(str(path / staging))
    files = sorted((path / staging).glob("*.parquet"))
    if not files:  # an empty DataFrame may yield no part files; keep the commit for its metadata
        shutil.rmtree(path / staging, ignore_errors=True)
        empty = pa.Table.from_batches([], schema=_arrow_schema_of(df))
        return write(path, empty, mode, txns=txns, metadata=metadata)
    schema = pq.read_schema(files[0])
    actions = [_add_action(path, f) for f in files]
    props = _commit_properties(txns, metadata)
    if exists(path):
        open_table(path).create_write_transaction(actions, mode=mode, schema=schema, commit_properties=props)
    else:
        create_table_with_add_actions(
            str(path), DeltaSchema.from_arrow(schema), actions, mode=mode, commit_properties=props
        )
    return open_table(path).version()


def delete(path: str | Path, predicate: str, *, attempts: int = 5) -> int:
    """Delete the rows matching `predicate` (Delta SQL) in one commit; returns how many.

    Files holding such rows are rewritten without them; the old files stay (for time
    travel) until `vacuum` after the retention. A commit that conflicts with a
    concurrent writer is retried on the new version.
    """
    for attempt in range(attempts):
        try:
            return int(open_table(path).delete(predicate).get("num_deleted_rows", 0))
        except CommitFailedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def vacuum(path: str | Path, retention_hours: int) -> int:
    """Remove files no version younger than the retention refers to. Returns how many files and folders.

    Delta's vacuum skips folders whose name starts with `_`, so Spark's staging
    folders (see `spark_write`) that no version refers to any more are removed here.
    """
    files = open_table(path).vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
    return len(files) + clean_staging(path, older_than_s=retention_hours * 3600)


def compact(path: str | Path, target_file_bytes: int, retention_hours: int) -> dict:
    """Merge small files, checkpoint the log, vacuum unreferenced files older than the retention."""
    table = open_table(path)
    metrics = table.optimize.compact(target_size=target_file_bytes)
    table = open_table(path)
    table.create_checkpoint()
    return {
        "files_removed": metrics.get("numFilesRemoved", 0),
        "files_added": metrics.get("numFilesAdded", 0),
        "vacuumed": vacuum(path, retention_hours),
        "version": table.version(),
    }


def clean_staging(path: str | Path, older_than_s: float = 3600) -> int:
    """Remove staging folders that no commit references (left by crashed jobs). Returns how many."""
    removed = 0
    referenced = {Path(uri).parent.name for uri in open_table(path).file_uris()} if exists(path) else set()
    for d in Path(path).glob(f"{STAGING_PREFIX}*"):
        if d.name not in referenced and time.time() - d.stat().st_mtime > older_than_s:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def _add_action(table_root: Path, file: Path) -> AddAction:
    meta = pq.read_metadata(file)
    stat = file.stat()
    return AddAction(
        path=str(file.relative_to(table_root)),
        size=stat.st_size,
        partition_values={},
        modification_time=int(stat.st_mtime * 1000),
        data_change=True,
        stats=json.dumps({"numRecords": meta.num_rows}),
    )


def _check_plain_parquet(table: DeltaTable) -> None:
    """Reading the parquet files directly is only right when no Delta feature changes what rows mean."""
    features = set(table.protocol().reader_features or [])
    unsupported = features & {"deletionVectors", "columnMapping"}
    if unsupported:
        raise LakeError(
            f"table uses {sorted(unsupported)}; read it with delta-spark (RECSYS_SPARK_DELTA_JARS=true) instead"
        )


def _spark_schema(table: DeltaTable):
    from pyspark.sql.pandas.types import from_arrow_schema

    arrow_schema = pa.schema(table.schema().to_arrow())
    return from_arrow_schema(arrow_schema)


def _arrow_schema_of(df: DataFrame) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema)


def _delta_spark_enabled(spark: SparkSession) -> bool:
    return "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")


def _spark_write_native(df, path, mode, txns, metadata) -> int:
    writer = df.write.format("delta").mode(mode)
    if txns:
        if len(txns) > 1:  # delta-spark's writer options carry a single transaction identifier
            raise LakeError("delta-spark writes take one (app_id, version) pair per commit")
        [(app_id, app_version)] = txns.items()
        writer = writer.option("txnAppId", app_id).option("txnVersion", app_version)
    if metadata:
        writer = writer.option("userMetadata", json.dumps(dict(metadata)))
    writer.save(str(path))
    return version(path)
