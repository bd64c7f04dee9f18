"""Fault injection for the local stack, and the checks that prove nothing was lost.

Used by the fault tests (tests/integration/test_faults.py) and the soak benchmark
(`make bench-soak`): the archiver and the speed layer run as processes and are
killed with SIGKILL at random moments while events stream in; afterwards
`check_exactly_once` and `check_user_vectors` compare what was stored and
published with what was produced, computed independently of the code under test.
"""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from kafka import TopicPartition

from infra import processes
from recsys.contracts.events import Event, validate_event
from recsys.contracts.tables import Tables
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.io import lake
from recsys.io.kafka import consumer, end_offsets, read_to_end
from recsys.io.model_store import ModelArtifact
from recsys.models.als import FoldIn
from recsys.protocol import Topics, VectorUpdate
from recsys.replay import replay
from recsys.settings import Settings

PROCESSES = {"archiver": ("jobs.archiver",), "speed": ("speed_layer", "--instance-id", "speed-0")}


@dataclass
class Chaos:
    """The archiver and the speed layer as processes, killed with SIGKILL and restarted at random moments."""

    s: Settings
    rng: random.Random
    procs: dict = field(default_factory=dict)
    kills: int = 0
    restarts_after_crash: int = 0  # processes that died without our SIGKILL

    def start(self, name: str) -> None:
        log = self.s.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        module, *args = PROCESSES[name]
        self.procs[name] = processes.start(module, self.s, *args, log=log)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        self.kills += 1

    def revive_crashed(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                self.restarts_after_crash += 1
                self.start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            processes.stop(proc)


def stream_with_kills(s: Settings, chaos: Chaos, n: int, phases: int, seed: int, n_users: int = 300,
                      n_items: int = 150) -> list[Event]:  # fmt: skip
    """Produce `n` messages (2% malformed) in `phases`; after each, kill and restart one or both processes
    while they are still catching up. Returns the valid events produced."""
    config = SyntheticConfig(n_events=n, seed=seed, malformed_share=0.02, n_users=n_users, n_items=n_items)
    messages = list(iter_messages(config, key=s.pseudonym_key_bytes()))
    per_phase = -(-len(messages) // phases)
    for phase in range(phases):
        chunk = messages[phase * per_phase : (phase + 1) * per_phase]
        sent = replay(chunk, settings=s, progress=False).sent
        if sent != len(chunk):
            raise RuntimeError(f"the broker took {sent} of {len(chunk)} messages")
        time.sleep(chaos.rng.uniform(0.2, 2.5))
        for name in chaos.rng.sample(sorted(PROCESSES), chaos.rng.choice([1, 2])):
            chaos.kill(name)
            chaos.start(name)
        chaos.revive_crashed()
    return [e for _, raw in messages if isinstance(e := validate_event(raw, s), Event)]


def wait_archived(s: Settings, timeout_s: float = 300) -> None:
    """Block until bronze records every offset in `events` (the archiver has nothing in flight).

    Broker restarts wait for this: the local broker (noida-db 0.2.3) acknowledges writes that
    arrive while it saves its state on SIGTERM and then loses them (measured: 896 dead letters
    acknowledged around a restart, 323 kept), which no client can guard against.
    """
    ends = end_offsets(Topics.EVENTS, s)
    table = Tables.path(Tables.BRONZE_EVENTS, s)
    deadline = time.monotonic() + timeout_s
    while True:
        done = lake.archived_offsets(table, Topics.EVENTS, ends)
        if all(end == 0 or done[p] >= end for p, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the archiver did not catch up within {timeout_s:.0f}s: {done} < {ends}")
        time.sleep(0.2)


def catch_up(s: Settings, chaos: Chaos, timeout_s: float = 900) -> float:
    """After the last kill: a fresh archiver runs until bronze holds everything, and a fresh speed layer
    until its group has read everything. Fresh processes, as after a real crash. Returns the seconds it took."""
    started = time.monotonic()
    chaos.stop()
    archiver = processes.start("jobs.archiver", s, "--until-caught-up", log=s.state_dir / "logs" / "archiver.log")
    if archiver.wait(timeout=timeout_s) != 0:
        raise RuntimeError(f"the final archiver failed (exit {archiver.returncode}); see {s.state_dir / 'logs'}")
    # A group of its own, so "read everything" is this process's own progress, from its own replay.
    final = s.model_copy(update={"speed_group": f"{s.speed_group}-final"})
    log = s.state_dir / "logs" / "speed.log"
    speed = processes.start("speed_layer", final, "--instance-id", "speed-final", log=log)
    ends = end_offsets(Topics.EVENTS, s)
    group = consumer(final.speed_group, settings=s)
    try:
        while sum((group.committed(TopicPartition(Topics.EVENTS, p)) or 0) for p in ends) < sum(ends.values()):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError("the final speed layer did not read everything in time")
            if speed.poll() is not None:
                raise RuntimeError(f"the final speed layer died; see {s.state_dir / 'logs'}")
            time.sleep(0.5)
    finally:
        group.close()
        processes.stop(speed)
    return time.monotonic() - started


# --- the checks ------------------------------------------------------------------------------------------
def check_exactly_once(s: Settings, produced: int, produced_valid: int) -> dict:
    """Bronze holds each valid event once, the DLQ each malformed one once. Raises AssertionError otherwise."""
    found = stored_counts(s)
    expected = {"bronze_rows": produced_valid, "distinct_event_ids": produced_valid,
                "distinct_positions": produced_valid, "dlq_rows": produced - produced_valid,
                "distinct_dlq_keys": produced - produced_valid}  # fmt: skip
    assert found == expected, f"stored {found}, expected {expected}"
    return found


def stored_counts(s: Settings) -> dict:
    """Rows and distinct events in bronze, letters and distinct source positions in the DLQ."""
    bronze = lake.read(Tables.path(Tables.BRONZE_EVENTS, s), columns=["event_id", "kafka_partition", "kafka_offset"])
    ids = bronze["event_id"].to_pylist()
    positions = set(zip(bronze["kafka_partition"].to_pylist(), bronze["kafka_offset"].to_pylist(), strict=True))
    dead = [r.key for records in read_to_end(Topics.DLQ, s) for r in records if r.key.startswith(b"events:")]
    return {"bronze_rows": len(ids), "distinct_event_ids": len(set(ids)), "distinct_positions": len(positions),
            "dlq_rows": len(dead), "distinct_dlq_keys": len(set(dead))}  # fmt: skip


def latest_updates(s: Settings) -> dict[tuple[str, str], VectorUpdate]:
    """The newest UP per (kind, id) on `model-updates` (a tombstone of a forgotten user removes theirs)."""
    latest = {}
    for records in read_to_end(Topics.MODEL_UPDATES, s):
        for r in records:
            if r.key.startswith(b"UP:"):
                kind, _, id_ = r.key.decode()[3:].partition(":")
                if r.value is None:
                    latest.pop((kind, id_), None)
                else:
                    latest[(kind, id_)] = VectorUpdate.model_validate_json(r.value)
    return latest


def expected_user_vectors(artifact: ModelArtifact, stream: list[Event], weights: dict) -> dict[str, np.ndarray]:
    """Independently of the speed layer: each streamed user's training row plus the stream, folded in once.

    Users who touched an item newer than the model are left out: their vector depends on
    when that item got one (the unit and speed-layer tests cover them).
    """
    index = {it: j for j, it in enumerate(artifact.item_ids)}
    rows = {u: i for i, u in enumerate(artifact.user_ids)}
    delta = defaultdict(lambda: np.zeros(len(index)))
    new_item_users = {e.user_id for e in stream if e.item_id not in index}
    for e in stream:
        if e.item_id in index:
            delta[e.user_id][index[e.item_id]] += weights[e.event_type]
    fold = FoldIn(artifact.item_factors, artifact.model.objective)
    out = {}
    for user, d in delta.items():
        if user not in new_item_users:
            row = d + (artifact.interactions[rows[user]].toarray().ravel() if user in rows else 0)
            nz = np.flatnonzero(row)
            out[user] = fold.vector(nz, row[nz])
    return out


def check_user_vectors(s: Settings, artifact: ModelArtifact, stream: list[Event]) -> int:
    """Every touched user's published vector equals an uninterrupted run's. Returns how many users were checked."""
    expected = expected_user_vectors(artifact, stream, s.event_weights)
    updates = latest_updates(s)
    for user, vector in expected.items():
        up = updates[("user", user)]
        assert up.model_version == artifact.manifest.model_version, (user, up.model_version)
        np.testing.assert_allclose(up.vector, vector, rtol=2e-3, atol=2e-4, err_msg=user)
    return len(expected)
