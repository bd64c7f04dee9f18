"""top_n: the published model's top N items for every one of its users, as the `user_top_n` Delta table.

Downstream jobs (e-mails, campaigns) read one table instead of calling the serving
layer once per user (docs/top_n.md: schema, when it is written, how to read it).
Each night after `publish` it replaces the table's whole content in one Delta commit
(an overwrite: readers see last night's rows or tonight's, never a mix).

Each user's list is what `GET /recommend/{user_id}?k=N` answers from the batch model
alone (no speed-layer updates yet): the same `ServingModel` ranks them, through the
model's batched path (`recommend_many`), excluding the same seen items. The users are
spread over Spark tasks; each task loads the published model once and ranks its users
`CHUNK` at a time, so the driver never holds the table.

Erasure: users whose forget request covers the model's data are left out, and checked
again after the commit (a request completed while the job ran would otherwise come
back with the overwrite); `recsys.erasure.complete` deletes a forgotten user's rows.

    spark-submit jobs/top_n.py [--n 50]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import typer
from pyspark.sql import SparkSession

from jobs.common import run_cli, setup_logging, spark_session, timed
from recsys import erasure
from recsys.contracts.tables import TOP_N_SCHEMA, TOP_N_SPARK_SCHEMA, Tables
from recsys.io import lake, model_store
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.top_n")
CHUNK = 256  # users ranked per `answer` call: big enough to share the item scan, small enough for its memory
USERS_PER_TASK = 50_000  # each Spark task loads the model once: few, large tasks


def forgotten(kafka_offsets: dict[int, int], s: Settings) -> set[str]:
    """Users whose forget request covers a model whose data ends at `kafka_offsets` (as `publish` erases them)."""
    return {m.user_id for m in erasure.requests(s) if m.covers(kafka_offsets)}


def rank_users(
    location: str, users: Iterator[list[str]], n: int, generated_at: datetime, s: Settings
) -> Iterator[pa.RecordBatch]:
    """The top-n rows of each user, as Arrow batches of `TOP_N_SCHEMA` (one batch per CHUNK users)."""
    from serving.model import ServingModel

    model = ServingModel(model_store.load_from(location, s), {}, s)
    for chunk in users:
        ranked = model.answer([model.prepare(u, n) for u in chunk])
        user_col: list[str] = []
        rank_col: list[int] = []
        items: list[str] = []
        scores: list[float] = []
        for user, answer in zip(chunk, ranked, strict=True):
            user_col += [user] * len(answer.item_ids)
            rank_col += range(1, len(answer.item_ids) + 1)
            items += answer.item_ids
            scores += answer.scores
        every = len(items)
        columns = {
            "user_id": user_col,
            "rank": rank_col,
            "item_id": items,
            "score": scores,
            "model_version": [model.version] * every,
            "generated_at": [generated_at] * every,
        }
        yield pa.RecordBatch.from_pydict(columns, schema=TOP_N_SCHEMA)


def _chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[list[str]]:
    """A task's user ids, CHUNK at a time."""
    pending: list[str] = []
    for batch in batches:
        pending += batch.column("user_id").to_pylist()
        while len(pending) >= CHUNK:
            yield pending[:CHUNK]
            pending = pending[CHUNK:]
    if pending:
        yield pending


def top_n(spark: SparkSession, n: int | None = None, settings: Settings | None = None) -> dict:
    """Rank every user of the latest published model and overwrite `user_top_n` with their top n."""
    s = settings or get_settings()
    n = n or s.top_n_k
    location = model_store.latest_published(s)
    if location is None:
        raise lake.LakeError("no published model: run publish first")
    manifest = model_store.read_manifest(location)
    artifact = model_store.load_from(location, s)
    gone = forgotten(manifest.kafka_offsets, s)
    users = [
        u for u in artifact.data.user_ids.tolist() if u not in gone and not u.startswith(model_store.ERASED_PREFIX)
    ]
    generated_at = datetime.now(UTC)
    path, where = Tables.path(Tables.USER_TOP_N, s), str(location)

    def rank_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from rank_users(where, _chunks(batches), n, generated_at, s)

    tasks = max(1, math.ceil(len(users) / USERS_PER_TASK))
    frame = spark.createDataFrame([(u,) for u in users], "user_id string").repartition(tasks)
    ranked = frame.mapInArrow(rank_partition, TOP_N_SPARK_SCHEMA)
    meta = {"model_version": manifest.model_version, "n": n, "generated_at": generated_at.isoformat()}
    with timed(f"rank {len(users)} users in {tasks} task(s), write {path}"):
        version = lake.spark_write(ranked, path, mode="overwrite", metadata=meta, writer="top_n")
    # A request the archiver completed while we ranked: its delete came before our overwrite.
    late = forgotten(manifest.kafka_offsets, s) - gone
    for user in sorted(late):
        lake.delete(path, erasure.user_predicate(user), spark=spark)
    # Earlier nights' files, once past the retention (delta-rs: a file listing, no Spark job for it).
    lake.vacuum(path, s.vacuum_retention_hours)
    rows = lake.read(path, columns=["user_id"]).num_rows
    return {
        "table": path,
        "version": version,
        "model_version": manifest.model_version,
        "users": len(users),
        "rows": rows,
        "n": n,
        "late_erasures": len(late),
    }


def main(n: int = typer.Option(None, help="Items per user (default RECSYS_TOP_N_K).")) -> None:
    """Write every user's top n of the published model to the user_top_n table."""
    setup_logging()
    spark = spark_session("top_n")
    try:
        print(json.dumps(top_n(spark, n)))
    finally:  # a failed run stops its session too (its error is the task's log)
        spark.stop()


if __name__ == "__main__":
    run_cli(main)
