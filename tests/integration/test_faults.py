"""Faults, end to end: kill -9 the archiver and the speed layer at random points of a 100,000-event stream,
restart the broker under them, kill a Spark job mid-write; afterwards nothing is lost, duplicated or half-visible.

Everything is real: the broker over TCP, the archiver and speed layer as processes, Delta tables on disk,
the clean job on Spark. `make bench --soak` runs the same scenario longer (bench/soak.py).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from published_models import produce, publish_model
from speed_checks import run_until_idle

from infra import broker as broker_process
from infra import processes
from infra.chaos import Chaos, check_exactly_once, check_user_vectors, stream_with_kills, wait_archived
from jobs.archiver import Archiver
from jobs.clean import clean
from recsys.contracts.tables import Tables
from recsys.io import lake, model_store
from recsys.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def kill_clean_mid_write(s: Settings, silver: Path, timeout_s: float = 180) -> None:
    """Run the clean job as a Spark process and SIGKILL it once its output files are being written."""
    proc = processes.start("jobs.clean", s, log=s.state_dir / "logs" / "clean-killed.log")
    deadline = time.monotonic() + timeout_s
    while not any(silver.glob("*.parquet")):  # Delta writes task files into the table folder before its commit
        assert proc.poll() is None, "the clean job ended before it wrote anything"
        assert time.monotonic() < deadline, "the clean job never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_broker_restart_and_a_killed_spark_write_lose_and_duplicate_nothing(isolated_stack, spark):
    s = isolated_stack.model_copy(update={"archiver_batch_max": 2_000, "speed_batch_max": 2_000})
    artifact = publish_model(s, produce(s, seed=1, n=4_000), "m20260101T000000000000")
    chaos = Chaos(s, random.Random(2026))
    for name in ("archiver", "speed"):
        chaos.start(name)
    try:
        stream = stream_with_kills(s, chaos, n=50_000, phases=4, seed=11)
        wait_archived(s)  # see wait_archived: the local broker loses writes acknowledged during its shutdown
        broker_process.stop(s)  # a broker restart under running (idle) consumers
        broker_process.start(s)
        stream += stream_with_kills(s, chaos, n=50_000, phases=4, seed=12)
        time.sleep(2)
        chaos.revive_crashed()
    finally:
        chaos.stop()
    assert chaos.kills >= 8
    assert chaos.restarts_after_crash == 0  # none died on its own, not even while the broker was away

    # Whatever state the killed processes left, a restart finishes the job from committed state.
    archiver = Archiver(s)
    archiver.run(until_caught_up=True)
    archiver.close()
    check_exactly_once(s, produced=4_000 + 100_000, produced_valid=4_000 + len(stream))
    run_until_idle(s, "speed-0")
    assert check_user_vectors(s, artifact, stream) > 150  # every touched user: as one uninterrupted run folds them

    # A Spark job killed mid-write leaves no visible trace; the rerun writes each event once.
    silver = Tables.path(Tables.SILVER_INTERACTIONS, s)
    kill_clean_mid_write(s, silver)
    assert lake.version(silver) is None and any(silver.glob("*.parquet"))
    report = clean(spark, settings=s)
    silver_ids = lake.read(silver, columns=["event_id"])["event_id"].to_pylist()
    assert len(silver_ids) == len(set(silver_ids)) == report.rows_out and report.dropped["duplicate"] == 0
    bronze_ids = lake.read(Tables.path(Tables.BRONZE_EVENTS, s), columns=["event_id"])["event_id"].to_pylist()
    assert set(silver_ids) <= set(bronze_ids)
    assert model_store.published_versions(s) == ["m20260101T000000000000"]
