"""Faults, end to end: kill -9 the archiver and the speed layer at random points of a 60,000-event stream,
kill -9 the broker in the middle of one write burst and SIGTERM it in the middle of another, kill a Spark job
mid-write; afterwards nothing is lost, duplicated or half-visible, and every UP the killed and restarted speed
layers published on the way is the fold-in of exactly the events up to the offset it carries.

Everything is real: Apache Kafka over TCP, the archiver and speed layer as processes, Delta tables on disk,
the clean job on Spark. `make bench-soak` runs the same scenario longer (bench/soak.py).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from published_models import produce, publish_model
from speed_checks import run_until_idle

from infra import processes
from infra.chaos import (
    Chaos,
    check_exactly_once,
    check_ups_follow_their_offsets,
    check_user_vectors,
    stream_with_kills,
    updates_end,
)
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
    chaos_start = updates_end(s)
    try:
        # Each half: 4 phases with process kills after each; in one phase of each half the broker goes down while
        # that phase's events are being produced (kill -9 in the first half, SIGTERM in the second).
        stream = stream_with_kills(s, chaos, n=30_000, phases=4, seed=11, broker_restarts=1, broker_how="SIGKILL")
        stream += stream_with_kills(s, chaos, n=30_000, phases=4, seed=12, broker_restarts=1, broker_how="SIGTERM")
        time.sleep(2)
        chaos.revive_crashed()
    finally:
        chaos.stop()
    chaos_end = updates_end(s)
    assert chaos.kills >= 8 and chaos.kills_while_working >= 6, (chaos.kills, chaos.kills_while_working)
    assert (chaos.broker_kills, chaos.broker_stops, chaos.broker_restarts_mid_burst) == (1, 1, 2)
    assert chaos.restarts_after_crash == 0  # none died on its own, not even while the broker was away

    # What the killed and restarted speed layers published during the chaos, before any catch-up: every UP is
    # the fold-in of exactly the events up to its source offset (a dropped or doubled event fails this; see
    # tests/unit/test_chaos_checks.py), including those published after each restart.
    checked = check_ups_follow_their_offsets(s, artifact, chaos_start, chaos_end)
    assert checked.checked > 2_000 and checked.users > 150, checked
    # Among them, those published by speed layers restarted after a SIGKILL, and after the broker's kill -9.
    for event in ("kill speed", "broker SIGKILL"):
        since = min(offset for what, offset in chaos.marks if what == event)
        later = check_ups_follow_their_offsets(s, artifact, since, chaos_end)
        assert later.checked > 500, f"too few UPs published after the first {event}: {later}"

    # Whatever state the killed processes left, a restart finishes the job from committed state.
    archiver = Archiver(s)
    archiver.run(until_caught_up=True)
    archiver.close()
    check_exactly_once(s, produced=4_000 + 60_000, produced_valid=4_000 + len(stream))
    run_until_idle(s, "speed-0")
    assert check_user_vectors(s, artifact, stream) > 150  # every touched user: as one uninterrupted run folds them

    # A Spark job killed mid-write leaves no visible trace; the rerun writes each event once.
    silver = Path(Tables.path(Tables.SILVER_INTERACTIONS, s))
    kill_clean_mid_write(s, silver)
    assert lake.version(silver) is None and any(silver.glob("*.parquet"))
    report = clean(spark, settings=s)
    silver_ids = lake.read(silver, columns=["event_id"])["event_id"].to_pylist()
    assert len(silver_ids) == len(set(silver_ids)) == report.rows_out and report.dropped["duplicate"] == 0
    bronze_ids = lake.read(Tables.path(Tables.BRONZE_EVENTS, s), columns=["event_id"])["event_id"].to_pylist()
    assert set(silver_ids) <= set(bronze_ids)
    assert model_store.published_versions(s) == ["m20260101T000000000000"]
