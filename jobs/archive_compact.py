"""archive-compact: make bronze cover everything in `events` up to now, then compact it.

The archiver normally runs all the time; this nightly step drains what it has
not written yet (exactly once, so it is harmless when the archiver is running),
completes pending forget requests (recsys.erasure), then rewrites the day's
many small files into few large ones, checkpoints the Delta log, vacuums files
older than the retention, and removes staging folders left by crashed Spark
writes. Not a Spark job: delta-rs does the work in-process.

    python -m jobs.archive_compact [--no-drain]
"""

from __future__ import annotations

import json
import logging

import typer

from jobs.archiver import Archiver
from jobs.common import run_cli, setup_logging, timed
from recsys import erasure
from recsys.contracts.tables import Tables
from recsys.io import lake
from recsys.settings import Settings, get_settings

log = logging.getLogger("jobs.archive_compact")
TARGET_FILE_BYTES = 128 * 1024 * 1024


def archive_compact(drain: bool = True, settings: Settings | None = None) -> dict:
    s = settings or get_settings()
    result: dict = {}
    if drain:
        with timed("drain events into bronze"):
            archiver = Archiver(s)
            try:
                result["archived"] = archiver.run(until_caught_up=True).archived
            finally:
                archiver.close()
    # The archiver has now passed every FORGET marker put on `events` so far: finish those requests.
    result["forget"] = erasure.complete_pending(s)
    for name in (Tables.BRONZE_EVENTS, Tables.SILVER_INTERACTIONS):
        path = Tables.path(name, s)
        if lake.exists(path):
            with timed(f"compact {name}"):
                result[name] = lake.compact(path, TARGET_FILE_BYTES, s.vacuum_retention_hours)
    return result


def main(drain: bool = typer.Option(True, help="Archive what is in `events` before compacting.")) -> None:
    """Drain the events topic into bronze, then compact and vacuum the tables."""
    setup_logging()
    print(json.dumps(archive_compact(drain), default=str))


if __name__ == "__main__":
    run_cli(main)
