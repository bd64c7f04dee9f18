"""backfill: bulk history straight into the bronze table, bypassing Kafka (one atomic commit).

For loading years of history, and for scale benchmarks (10M+ events) that the
local broker is not built for. Backfilled rows carry kafka_partition = -1 (and a kafka_offset
counting rows within that backfill), so they never collide with archived rows and
the speed layer's replay offsets ignore them.

    python -m jobs.backfill synthetic --events 10000000 [--seed 0]
    python -m jobs.backfill movielens
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import pyarrow as pa
import typer
from tqdm import tqdm

from recsys.contracts.events import Event
from recsys.contracts.tables import BRONZE_SCHEMA, EVENT_COLUMNS, Tables
from recsys.io import lake
from recsys.settings import Settings, get_settings

app = typer.Typer(help="Bulk-load history into the bronze table.", no_args_is_help=True, add_completion=False)
BACKFILL_PARTITION = -1


def to_bronze(batches: Iterable[pa.RecordBatch], progress: tqdm | None = None) -> Iterator[pa.RecordBatch]:
    """Event-column batches -> bronze batches (source columns added)."""
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    offset = 0
    for batch in batches:
        n = batch.num_rows
        columns = [
            batch.column(name).cast(field.type) for name, field in zip(EVENT_COLUMNS.names, EVENT_COLUMNS, strict=True)
        ]
        columns += [
            pa.array([BACKFILL_PARTITION] * n, pa.int32()),
            pa.array(range(offset, offset + n), pa.int64()),
            pa.array([now.value] * n, pa.timestamp("us", tz="UTC")),
            pa.nulls(n, pa.string()),  # request_id: a backfilled event came from no answer
        ]
        offset += n
        if progress is not None:
            progress.update(n)
        yield pa.RecordBatch.from_arrays(columns, schema=BRONZE_SCHEMA)


def events_to_batches(events: Iterable[Event], size: int = 50_000) -> Iterator[pa.RecordBatch]:
    it = iter(events)
    while chunk := list(itertools.islice(it, size)):
        # model_dump() would give ts as epoch ms (the wire format); the columns want the datetime.
        rows = [{**e.model_dump(), "ts": e.ts} for e in chunk]
        yield pa.RecordBatch.from_pylist(rows, schema=EVENT_COLUMNS)


def backfill(batches: Iterable[pa.RecordBatch], total: int | None = None, settings: Settings | None = None) -> int:
    """Append all batches to bronze in one commit (streamed: memory stays flat). Returns the table version."""
    s = settings or get_settings()
    with tqdm(total=total, unit="ev", desc="backfill -> bronze") as bar:
        reader = pa.RecordBatchReader.from_batches(BRONZE_SCHEMA, to_bronze(batches, bar))
        return lake.write(Tables.path(Tables.BRONZE_EVENTS, s), reader, metadata={"writer": "backfill"})


@app.command()
def synthetic(
    events: int = typer.Option(1_000_000),
    seed: int = typer.Option(0),
    users: int = typer.Option(100_000),
    items: int = typer.Option(50_000),
) -> None:
    """The seeded synthetic e-commerce stream (valid events only)."""
    from recsys.data.synthetic import SyntheticConfig, iter_batches

    config = SyntheticConfig(n_events=events, seed=seed, n_users=users, n_items=items)
    typer.echo(f"bronze version {backfill(iter_batches(config), total=events)}")


@app.command()
def movielens() -> None:
    """MovieLens-100K (from the installed recbole wheel)."""
    from recsys.data import movielens as ml

    typer.echo(f"bronze version {backfill(events_to_batches(ml.iter_events()), total=ml.N_RATINGS)}")


if __name__ == "__main__":
    app()
