"""The lake: Delta tables on disk, written by two engines that keep to one protocol.

- **delta-spark** inside the Spark jobs (clean, train, evaluate, archive-compact):
  `spark_read` reads a snapshot with `versionAsOf`; `spark_write` writes a DataFrame
  as one Delta commit, idempotently when given a transaction id (`txnAppId` /
  `txnVersion`: a retried write whose id and version the table already records is
  skipped); `delete`, `vacuum` and `compact` run Delta's DELETE, VACUUM and OPTIMIZE
  when handed the job's SparkSession.
- **delta-rs** (`deltalake`) where no JVM is wanted: the archiver's appends, the
  archiver's erasure deletes and vacuums, small reads (serving, CLI, registry rows).

Every write is one atomic Delta commit: readers see the table before it or after it,
never half of it. A Spark job that dies mid-write leaves parquet files no version
refers to; no reader sees them and `vacuum` removes them after the retention.

One writer per table at a time. delta-rs commits atomically on a local disk, but
delta-spark's log store there does not stop another process from committing the
same version (its check-then-rename is atomic only inside one JVM). So every write
here (either engine, any process) holds `writer_lock(table)`: an fcntl lock on the
file `.<table>.lock` next to the table, held for one commit (the archiver's append)
or one Spark write/maintenance operation; a second writer waits for it, up to
`RECSYS_LAKE_LOCK_TIMEOUT_S`, then fails naming the holder. On S3/HDFS the lock is not
there (paths with a scheme): use a log store with mutual exclusion instead.

Tables keep to features both engines write: Spark sessions create no deletion
vectors (recsys.io.spark.delta_conf), and nothing enables identity columns,
clustering, row tracking, in-commit timestamps or type widening.

Exactly-once writers pass `txns={app_id: app_version, ...}` (the archiver: one pair per
Kafka partition; a Spark job: one pair): the pairs are stored in the same commit as
the data (Delta's transaction identifiers), so after a crash `committed_app_version`
says precisely what was written. `metadata={...}` is stored with the commit and read
back by `commit_metadata`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from recsys.contracts.tables import Tables
from recsys.settings import get_settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("recsys.lake")
WriteMode = Literal["append", "overwrite"]


class LakeError(RuntimeError):
    """A table cannot be read or written as asked (missing, unsupported feature, bad version)."""


class TableLocked(LakeError):
    """Another writer held the table's writer lock for longer than we were willing to wait."""


# --- one writer per table ------------------------------------------------------------------
_held = threading.local()  # lock files this thread holds, with a count (a writer may nest, e.g. compact)


def is_remote(path: str | Path) -> bool:
    """True for a table on HDFS (a URI), false for a local folder."""
    return "://" in str(path)


def lock_file(path: str | Path) -> Path:
    """The writer lock of the table at `path`: a file next to the table (never inside it: vacuum owns that)."""
    p = Path(path)
    return p.parent / f".{p.name}.lock"


@contextmanager
def writer_lock(path: str | Path, what: str = "", timeout_s: float | None = None) -> Iterator[None]:
    """Hold the table's writer lock: wait for another writer to finish, up to `timeout_s`, then raise TableLocked.

    `what` names this writer in the lock file, so whoever waits can say who holds it. Re-entrant in one thread.
    """
    if is_remote(path):  # HDFS: no fcntl, but both engines commit by an atomic rename there, so no lock is needed
        yield
        return
    file = lock_file(path)
    held: dict[Path, int] = _held.__dict__.setdefault("files", {})
    if held.get(file):
        held[file] += 1
        try:
            yield
        finally:
            held[file] -= 1
        return
    if timeout_s is None:
        timeout_s = getattr(_held, "timeout_s", None)
    if timeout_s is None:
        timeout_s = get_settings().lake_lock_timeout_s
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, file, path, what, timeout_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what or "writer", "since": time.time()}).encode(), 0)
        held[file] = 1
        try:
            yield
        finally:
            held.pop(file, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def lock_timeout(seconds: float) -> Iterator[None]:
    """Inside this block, this thread's writes wait at most `seconds` for another writer (then TableLocked)."""
    before = getattr(_held, "timeout_s", None)
    _held.timeout_s = seconds
    try:
        yield
    finally:
        _held.timeout_s = before


def _acquire(fd: int, file: Path, path: str | Path, what: str, timeout_s: float) -> None:
    started = time.monotonic()
    logged = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if logged:
                waited = time.monotonic() - started
                log.info("%s: got the writer lock of %s after %.1fs", what or "writer", path, waited)
            return
        except BlockingIOError:
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise TableLocked(
                    f"{what or 'a writer'} gave up after {waited:.1f}s: table {path} is being written by "
                    f"{lock_holder(path)} (one writer per table at a time; lock file {file})"
                ) from None
            if not logged:
                log.info("%s waits for the writer lock of %s, held by %s", what or "writer", path, lock_holder(path))
                logged = True
            time.sleep(min(0.1, max(timeout_s - waited, 0.0)))


def lock_holder(path: str | Path) -> str:
    """Who holds the table's writer lock, as its holder wrote it (best effort)."""
    try:
        info = json.loads(lock_file(path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"{info.get('what', 'a writer')} (pid {info.get('pid', '?')}, since {since})"


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
    ids = {p: Tables.archiver_txn_id(topic, p) for p in partitions}
    recorded = committed_app_versions(path, list(ids.values()))
    return {p: recorded[app_id] or 0 for p, app_id in ids.items()}


def commit_metadata(path: str | Path, version: int) -> dict:
    """The custom metadata stored by the newest commit at or before `version` that stored any.

    Maintenance commits (DELETE, OPTIMIZE, VACUUM) store none: the data they leave still comes from the
    write before them (e.g. silver after an erasure DELETE still comes from the same clean run).
    Values are as written: strings, anything else as JSON text.
    """
    entries = {e.get("version"): e for e in open_table(path).history()}
    if version not in entries:
        raise LakeError(f"table {path} has no version {version}")
    for v in sorted((v for v in entries if v is not None and v <= version), reverse=True):
        entry = entries[v]
        found = {k: val for k, val in entry.items() if k not in _HISTORY_FIELDS}
        if entry.get("userMetadata"):  # delta-spark keeps ours in its one userMetadata string
            found.update(json.loads(entry["userMetadata"]))
        if found:
            return found
    return {}


_HISTORY_FIELDS = {
    "version",
    "timestamp",
    "operation",
    "operationParameters",
    "clientVersion",
    "readVersion",
    "isBlindAppend",
    "operationMetrics",
    "engineInfo",
    "userName",
    # delta-spark's commitInfo
    "userMetadata",
    "isolationLevel",
    "txnId",
    "tags",
    "inCommitTimestamp",
    "clusterId",
    "userId",
    "notebook",
    "job",
}


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
    writer: str = "delta-rs write",
) -> int:
    """Append (or overwrite with) `data` in one atomic commit; creates the table if needed.

    Returns the new table version.
    """
    if not is_remote(path):  # HDFS creates parent folders itself
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path, writer):
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
    return CommitProperties(custom_metadata=_stringify(metadata) or None, app_transactions=app_txns or None)


def _stringify(metadata: Mapping[str, object] | None) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}


# --- Spark: delta-spark reads and writes ----------------------------------------------------
def spark_read(spark: SparkSession, path: str | Path, version: int | None = None) -> DataFrame:
    """The table at `version` (default: latest) as a Spark DataFrame (Delta's `versionAsOf`)."""
    if not exists(path):
        raise LakeError(f"no Delta table at {path}")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(str(path))


def spark_write(
    df: DataFrame,
    path: str | Path,
    mode: WriteMode = "append",
    *,
    txns: Mapping[str, int] | None = None,
    metadata: Mapping[str, object] | None = None,
    writer: str = "spark write",
) -> int:
    """Write `df` to the table in one atomic Delta commit (delta-spark). Returns the table's version after it.

    With `txns={app_id: v}` the write is idempotent: if the table already records `v` (or later) for
    `app_id`, Delta skips it and the version stays where it was.
    """
    out = df.write.format("delta").mode(mode)
    if txns:
        if len(txns) > 1:  # delta-spark's writer options carry a single transaction identifier
            raise LakeError("delta-spark writes take one (app_id, version) pair per commit")
        [(app_id, app_version)] = txns.items()
        out = out.option("txnAppId", app_id).option("txnVersion", int(app_version))
    if metadata:
        out = out.option("userMetadata", json.dumps(_stringify(metadata)))
    with writer_lock(path, writer):
        before = version(path)
        out.save(str(path))
        after = version(path)
    assert after is not None  # the save just committed a version
    if txns and after == before:
        log.info("%s: %s already holds %s, nothing written (idempotent write)", writer, path, dict(txns))
    return after


# --- maintenance: delete, vacuum, compact (delta-spark given a session, else delta-rs) ----------
def delete(path: str | Path, predicate: str, *, spark: SparkSession | None = None, attempts: int = 5) -> int:
    """Delete the rows matching `predicate` (Delta SQL) in one commit; returns how many.

    Files holding such rows are rewritten without them (never deletion vectors); the old files stay
    (for time travel) until `vacuum` after the retention.
    """
    with writer_lock(path, "delete"):
        if spark is not None:
            from delta.tables import DeltaTable as SparkDeltaTable

            before = version(path)
            SparkDeltaTable.forPath(spark, str(path)).delete(predicate)
            after = version(path)
            return 0 if after == before else _metric(spark, path, "numDeletedRows")
        for attempt in range(attempts):
            try:
                return int(open_table(path).delete(predicate).get("num_deleted_rows", 0))
            except CommitFailedError:  # only a writer that ignores the lock gets here
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def vacuum(path: str | Path, retention_hours: int, *, spark: SparkSession | None = None) -> int:
    """Remove files no version younger than the retention refers to (also files of writes that died before
    their commit). Returns how many files."""
    with writer_lock(path, "vacuum"):
        if spark is not None:
            from delta.tables import DeltaTable as SparkDeltaTable

            SparkDeltaTable.forPath(spark, str(path)).vacuum(float(retention_hours))
            return _metric(spark, path, "numDeletedFiles")
        # full: list the folder, so files of writes that died before their commit (in no log entry) go too
        files = open_table(path).vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True
        )
        return len(files)


def compact(path: str | Path, target_file_bytes: int, retention_hours: int, *, spark: SparkSession) -> dict:
    """OPTIMIZE (merge small files), checkpoint the log, VACUUM files older than the retention: one writer
    throughout, so the archiver's appends wait for it and then go on at the next version."""
    from delta.tables import DeltaTable as SparkDeltaTable

    with writer_lock(path, "compact"):
        spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(target_file_bytes))
        result = SparkDeltaTable.forPath(spark, str(path)).optimize().executeCompaction().first()
        assert result is not None  # OPTIMIZE answers one row
        metrics = result["metrics"]
        # Checkpoint the latest version: readers (both engines) then replay the log from here.
        open_table(path).create_checkpoint()
        vacuumed = vacuum(path, retention_hours, spark=spark)
        return {
            "files_removed": metrics["numFilesRemoved"],
            "files_added": metrics["numFilesAdded"],
            "vacuumed": vacuumed,
            "version": version(path),
        }


def _metric(spark: SparkSession, path: str | Path, name: str) -> int:
    """A metric of the table's latest commit (delta-spark's DELETE and VACUUM END record theirs there)."""
    from delta.tables import DeltaTable as SparkDeltaTable

    [last] = SparkDeltaTable.forPath(spark, str(path)).history(1).select("operationMetrics").collect()
    return int((last["operationMetrics"] or {}).get(name, 0))
