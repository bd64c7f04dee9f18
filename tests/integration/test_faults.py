"""Faults, end to end: kill -9 the archiver and the speed layer at random points of a 100,000-event stream,
restart the broker under them, kill a Spark job mid-write; afterwards nothing is lost, duplicated or half-visible.

Everything is real: the broker over TCP, the archiver and speed layer as processes, Delta tables on disk,
the clean job on Spark. `make bench --soak` runs the same scenario longer (bench/soak.py).
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from published_models import produce, publish_model
from speed_checks import assert_users_match, run_until_idle

from infra import broker as broker_process
from infra import processes
from jobs.archiver import Archiver
from jobs.clean import clean
from recsys import lake, model_store
from recsys.contracts import Event, Tables, Topics, validate_event
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.kafka_io import read_to_end
from recsys.replay import replay
from recsys.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@dataclass
class Chaos:
    """The archiver and the speed layer as processes, killed with SIGKILL and restarted at random moments."""

    s: Settings
    rng: random.Random
    procs: dict = field(default_factory=dict)
    kills: int = 0
    restarts_after_crash: int = 0

    def start(self, name: str) -> None:
        module, args = {"archiver": ("jobs.archiver", ()), "speed": ("speed_layer", ("--instance-id", "speed-0"))}[name]
        log = self.s.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        self.procs[name] = processes.start(module, self.s, *args, log=log)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        self.kills += 1

    def revive_crashed(self) -> None:
        """A process that died on its own (not by our hand) is restarted, and counted."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                self.restarts_after_crash += 1
                self.start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            processes.stop(proc)


def stream_with_kills(s: Settings, chaos: Chaos, n: int, phases: int, seed: int) -> list[Event]:
    """Produce `n` messages in `phases`; during each, kill and restart one or both processes at a random moment.

    Returns the valid events produced (the malformed ones must end in the DLQ).
    """
    config = SyntheticConfig(n_events=n, seed=seed, malformed_share=0.02, n_users=300, n_items=150)
    messages = list(iter_messages(config, key=s.pseudonym_key_bytes()))
    per_phase = -(-len(messages) // phases)
    for phase in range(phases):
        chunk = messages[phase * per_phase : (phase + 1) * per_phase]
        assert replay(chunk, settings=s, progress=False).sent == len(chunk)
        time.sleep(chaos.rng.uniform(0.2, 2.5))  # mid-work: the processes are still catching up
        for name in chaos.rng.sample(["archiver", "speed"], chaos.rng.choice([1, 2])):
            chaos.kill(name)
            chaos.start(name)
        chaos.revive_crashed()
    return [e for _, raw in messages if isinstance(e := validate_event(raw, s), Event)]


def dead_letter_count(s: Settings) -> int:
    return sum(1 for records in read_to_end(Topics.DLQ, s) for r in records if r.key.startswith(b"events:"))


def kill_clean_mid_write(s: Settings, silver: Path, timeout_s: float = 180) -> None:
    """Run the clean job as a Spark process and SIGKILL it once its output files are being written."""
    proc = processes.start("jobs.clean", s, log=s.state_dir / "logs" / "clean-killed.log")
    deadline = time.monotonic() + timeout_s
    while not any(silver.glob(f"{lake.STAGING_PREFIX}*/*")):
        assert proc.poll() is None, "the clean job ended before it wrote anything"
        assert time.monotonic() < deadline, "the clean job never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_broker_restart_and_a_killed_spark_write_lose_and_duplicate_nothing(isolated_stack, spark):
    s = isolated_stack.model_copy(update={"archiver_batch_max": 2_000, "speed_batch_max": 2_000})
    artifact = publish_model(s, produce(s, seed=1, n=4_000), "m1")
    history_dlq = 0  # the model's history has no malformed events
    chaos = Chaos(s, random.Random(2026))
    for name in ("archiver", "speed"):
        chaos.start(name)
    try:
        stream = stream_with_kills(s, chaos, n=50_000, phases=4, seed=11)
        broker_process.stop(s)  # a broker restart under running consumers
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
    bronze = lake.read(Tables.path(Tables.BRONZE_EVENTS, s))
    ids = bronze["event_id"].to_pylist()
    produced_valid = 4_000 + len(stream)
    produced = 4_000 + 100_000
    assert len(ids) == produced_valid and len(set(ids)) == len(ids)
    assert dead_letter_count(s) - history_dlq == produced - produced_valid
    positions = set(zip(bronze["kafka_partition"].to_pylist(), bronze["kafka_offset"].to_pylist(), strict=True))
    assert len(positions) == len(ids)

    run_until_idle(s, "speed-0")
    assert assert_users_match(s, artifact, stream) > 150  # every touched user: as one uninterrupted run folds them

    # A Spark job killed mid-write leaves no visible trace; the rerun writes each event once.
    silver = Tables.path(Tables.SILVER_INTERACTIONS, s)
    kill_clean_mid_write(s, silver)
    assert lake.version(silver) is None and any(silver.glob(f"{lake.STAGING_PREFIX}*"))
    report = clean(spark, settings=s)
    silver_ids = lake.read(silver, columns=["event_id"])["event_id"].to_pylist()
    assert len(silver_ids) == len(set(silver_ids)) == report.rows_out and report.dropped["duplicate"] == 0
    assert set(silver_ids) <= set(ids)
    assert model_store.published_versions(s) == ["m1"]
