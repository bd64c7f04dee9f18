"""Fault injection for the local stack, and the checks that prove nothing was lost.

Used by the fault tests (tests/integration/test_faults.py, test_speed_layer.py) and the soak
benchmark (`make bench-soak`): the archiver and the speed layer run as processes and are killed
with SIGKILL at random moments while events stream in, and the Kafka broker is killed with SIGKILL
(or stopped with SIGTERM) and restarted in the middle of a write burst. Afterwards the checks compare
what was stored and published with what was produced, computed independently of the code under test:

- `check_exactly_once`: bronze rows + dead letters = the messages produced, each once;
- `check_ups_follow_their_offsets`: every UP the killed and restarted speed layers published during the
  chaos (not only the newest per user, and before any final catch-up) equals the fold-in of the
  training row plus exactly the user's events up to the `source_offset` it carries: an event dropped
  or counted twice by a crash shows up here;
- `check_user_vectors`: after a catch-up, each touched user's newest UP equals an uninterrupted run's.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import scipy.sparse as sp
from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError

from infra import broker, processes
from recsys.contracts.events import Event, control_kind, validate_event
from recsys.contracts.tables import Tables
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.io import lake
from recsys.io.kafka import bootstrap, consumer, end_offsets, read_to_end
from recsys.io.model_store import ModelArtifact
from recsys.models.als import FoldIn, ImplicitALS, SparkALS
from recsys.protocol import Topics, VectorUpdate, parse_key
from recsys.replay import replay
from recsys.settings import Settings

PROCESSES = {"archiver": ("jobs.archiver",), "speed": ("speed_layer", "--instance-id", "speed-0")}


@dataclass
class Chaos:
    """The archiver and the speed layer as processes, killed with SIGKILL and restarted at random moments;
    the broker killed (or stopped) and restarted under them."""

    s: Settings
    rng: random.Random
    procs: dict = field(default_factory=dict)
    kills: int = 0
    restarts_after_crash: int = 0  # processes that died without our SIGKILL
    broker_kills: int = 0  # SIGKILLs of the broker
    broker_stops: int = 0  # SIGTERMs (controlled shutdowns) of the broker
    broker_restarts_mid_burst: int = 0  # the broker went down while a producer still had messages to send
    # (what happened, `model-updates` end offset right after it): tells which UPs restarted instances published
    marks: list = field(default_factory=list)

    kills_while_working: int = 0  # SIGKILLs of a process that had done some of its work (published, committed)
    _progress_at_start: dict = field(default_factory=dict)

    def start(self, name: str) -> None:
        log = self.s.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        module, *args = PROCESSES[name]
        self._progress_at_start[name] = self.progress(name)
        self.procs[name] = processes.start(module, self.s, *args, log=log)

    def progress(self, name: str) -> tuple:
        """What the process has done so far, as seen from outside: UPs published (speed); bronze commits and the
        archiver's member id in its group (a restarted archiver with nothing left to archive only joins)."""
        if name == "speed":
            return (updates_end(self.s),)
        return (
            lake.version(Tables.path(Tables.BRONZE_EVENTS, self.s)) or 0,
            _member_id(self.s, self.s.archiver_group, self.s.archiver_instance_id),
        )

    def _advanced(self, name: str) -> bool:
        now, then = self.progress(name), self._progress_at_start[name]
        return now[0] > then[0] or (len(now) > 1 and now[1] is not None and now[1] != then[1])

    def wait_working(self, name: str, timeout_s: float = 90) -> bool:
        """Until a (re)started process has loaded what it needs and done some work: a kill then interrupts work,
        not the interpreter's start-up. Returns whether it did within the timeout."""
        deadline = time.monotonic() + timeout_s
        while not self._advanced(name):
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                return False
            time.sleep(0.2)
        return True

    def kill(self, name: str) -> None:
        worked = self._advanced(name)
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        self.kills += 1
        self.kills_while_working += worked
        self.marks.append((f"kill {name}", updates_end(self.s)))

    def restart_broker(self, how: str = "SIGKILL", down_s: float | None = None) -> None:
        """kill -9 the broker (or SIGTERM it and wait for Kafka's controlled shutdown), then start it again."""
        if how == "SIGKILL":
            broker.kill_node(self.s, 1)
            self.broker_kills += 1
        else:
            broker.stop(self.s)
            self.broker_stops += 1
        time.sleep(self.rng.uniform(0.5, 3.0) if down_s is None else down_s)
        broker.start(self.s)
        self.marks.append((f"broker {how}", updates_end(self.s)))

    def revive_crashed(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                self.restarts_after_crash += 1
                self.start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            processes.stop(proc)


def _member_id(s: Settings, group: str, instance: str) -> str | None:
    """The member id the group coordinator gives the static member `instance` now (None if not a member)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(s), request_timeout_ms=5000)
    try:
        found = admin.describe_groups([group])
    except KafkaError:
        return None
    finally:
        admin.close()
    described = found[group] if isinstance(found, dict) else found[0]
    return next(
        (m["member_id"] for m in described.get("members") or [] if m.get("group_instance_id") == instance), None
    )


def updates_end(s: Settings) -> int:
    """The next offset of `model-updates` (one partition)."""
    return end_offsets(Topics.MODEL_UPDATES, s).get(0, 0)


def stream_with_kills(
    s: Settings,
    chaos: Chaos,
    n: int,
    phases: int,
    seed: int,
    n_users: int = 300,
    n_items: int = 150,
    broker_restarts: int = 0,
    broker_how: str = "SIGKILL",
) -> list[Event]:
    """Produce `n` messages (2% malformed) in `phases`; after each, kill and restart one or both processes
    while they are still catching up. In `broker_restarts` of the phases the broker is killed (`broker_how`)
    and restarted while that phase's messages are still being produced, and while the archiver and the speed
    layer write their own bursts (dead letters, UPs). Returns the valid events produced."""
    config = SyntheticConfig(n_events=n, seed=seed, malformed_share=0.02, n_users=n_users, n_items=n_items)
    messages = list(iter_messages(config, key=s.pseudonym_key_bytes()))
    per_phase = -(-len(messages) // phases)
    with_broker_restart = set(chaos.rng.sample(range(phases), broker_restarts))
    for phase in range(phases):
        chunk = messages[phase * per_phase : (phase + 1) * per_phase]
        if phase in with_broker_restart:
            sent = _produce_through_a_broker_restart(s, chaos, chunk, broker_how)
        else:
            sent = replay(chunk, settings=s, progress=False).sent
        if sent != len(chunk):
            raise RuntimeError(f"the broker acknowledged {sent} of {len(chunk)} messages")
        time.sleep(chaos.rng.uniform(0.2, 2.5))
        restarted = chaos.rng.sample(sorted(PROCESSES), chaos.rng.choice([1, 2]))
        for name in restarted:
            chaos.kill(name)
            chaos.start(name)
        chaos.revive_crashed()
        if phase < phases - 1:  # the next kill should land on a process at work, not on one still importing
            for name in restarted:
                chaos.wait_working(name)
    return [e for _, raw in messages if isinstance(e := validate_event(raw, s), Event)]


def _produce_through_a_broker_restart(s: Settings, chaos: Chaos, chunk: list, how: str) -> int:
    """Replay `chunk` paced over ~4 s and take the broker down in the middle of it. The producer (idempotent,
    acks=all) retries its unacknowledged batches until the broker is back. Returns how many were acknowledged."""
    reports: list = []
    rate = len(chunk) / 4.0
    producing = threading.Thread(
        target=lambda: reports.append(replay(chunk, rate=rate, settings=s, progress=False)), daemon=True
    )  # a failed test must not hang on a producer waiting for a broker
    before = sum(end_offsets(Topics.EVENTS, s).values())
    producing.start()
    time.sleep(chaos.rng.uniform(1.0, 2.5))
    written = sum(end_offsets(Topics.EVENTS, s).values()) - before
    mid_burst = producing.is_alive() and 0 < written < len(chunk)
    chaos.restart_broker(how)
    producing.join(300)
    chaos.broker_restarts_mid_burst += mid_burst
    return reports[0].sent if reports else 0


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
    expected = {
        "bronze_rows": produced_valid,
        "distinct_event_ids": produced_valid,
        "distinct_positions": produced_valid,
        "dlq_rows": produced - produced_valid,
        "distinct_dlq_keys": produced - produced_valid,
    }
    assert found == expected, f"stored {found}, expected {expected}"
    return found


def stored_counts(s: Settings) -> dict:
    """Rows and distinct events in bronze, letters and distinct source positions in the DLQ."""
    bronze = lake.read(Tables.path(Tables.BRONZE_EVENTS, s), columns=["event_id", "kafka_partition", "kafka_offset"])
    ids = bronze["event_id"].to_pylist()
    positions = set(zip(bronze["kafka_partition"].to_pylist(), bronze["kafka_offset"].to_pylist(), strict=True))
    dead = [r.key for records in read_to_end(Topics.DLQ, s) for r in records if r.key.startswith(b"events:")]
    return {
        "bronze_rows": len(ids),
        "distinct_event_ids": len(set(ids)),
        "distinct_positions": len(positions),
        "dlq_rows": len(dead),
        "distinct_dlq_keys": len(set(dead)),
    }


def latest_updates(s: Settings, challenger: str = "") -> dict[tuple[str, str], VectorUpdate]:
    """The newest UP per (kind, id) on `model-updates` (a tombstone of a forgotten user removes theirs): the served
    model's, or with `challenger` those of that A/B test challenger (keyed by its version, `protocol.up_key`)."""
    latest: dict[tuple[str, str], VectorUpdate] = {}
    for records in read_to_end(Topics.MODEL_UPDATES, s):
        for r in records:
            key = parse_key(r.key)
            if key.is_up() and key.version == challenger:
                if r.value is None:
                    latest.pop((key.kind, key.id), None)
                else:
                    latest[(key.kind, key.id)] = VectorUpdate.model_validate_json(r.value)
    return latest


def expected_user_vectors(artifact: ModelArtifact, stream: list[Event], weights: dict) -> dict[str, np.ndarray]:
    """Independently of the speed layer: each streamed user's training row plus the stream, folded in once.

    Users who touched an item newer than the model are left out: their vector depends on
    when that item got one (the unit and speed-layer tests cover them).
    """
    index = {it: j for j, it in enumerate(artifact.item_ids)}
    rows = {u: i for i, u in enumerate(artifact.user_ids)}
    delta: defaultdict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(index)))
    new_item_users = {e.user_id for e in stream if e.item_id not in index}
    for e in stream:
        if e.item_id in index:
            delta[e.user_id][index[e.item_id]] += weights[e.event_type]
    fold = FoldIn(artifact.item_factors, cast("ImplicitALS | SparkALS", artifact.model).objective)
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
        assert up.vector is not None, user
        np.testing.assert_allclose(up.vector, vector, rtol=2e-3, atol=2e-4, err_msg=user)
    return len(expected)


# --- UPs published during the chaos, each against the events up to its source offset ----------------------
@dataclass
class UpCheck:
    checked: int = 0  # UPs compared with an independent fold-in
    users: int = 0
    skipped_new_items: int = 0  # UPs of users who touched an item the model lacks (their vector depends on its)
    other_models: int = 0
    mismatched: list = field(default_factory=list)  # UPs that are not what their source offset says

    def assert_ok(self) -> None:
        assert not self.mismatched, f"{len(self.mismatched)} of {self.checked} UPs differ, e.g. {self.mismatched[:3]}"


def user_events_after_cutoff(s: Settings, artifact: ModelArtifact) -> dict[str, list[tuple[int, Event]]]:
    """Per user, their valid events on `events` after the model's cut-off, as (offset, event) in log order.

    A user's events are all in one partition (keyed by user), so offsets order them.
    """
    cutoff = artifact.manifest.kafka_offsets
    out: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for records in read_to_end(Topics.EVENTS, s):
        for r in records:
            if r.offset < cutoff.get(r.partition, 0) or control_kind(r.headers) is not None:
                continue
            if isinstance(e := validate_event(r.value, s), Event):
                out[e.user_id].append((r.offset, e))
    return out


def user_updates(s: Settings, start: int = 0, end: int | None = None) -> list[VectorUpdate]:
    """Every user UP on `model-updates` at offsets [start, end), in log order (all of them, not the newest)."""
    out = []
    for records in read_to_end(Topics.MODEL_UPDATES, s):
        for r in records:
            if start <= r.offset and (end is None or r.offset < end) and parse_key(r.key).is_up("user") and r.value:
                out.append(VectorUpdate.model_validate_json(r.value))
    return out


def ups_against_offsets(
    artifact: ModelArtifact,
    history: dict[str, list[tuple[int, Event]]],
    ups: list[VectorUpdate],
    weights: dict[str, float],
) -> UpCheck:
    """Compare each UP with the fold-in of its user's training row plus exactly their events up to and
    including the UP's `source_offset`, computed here from the log, independently of the speed layer."""
    index = {it: j for j, it in enumerate(artifact.item_ids.tolist())}
    rows = {u: i for i, u in enumerate(artifact.user_ids.tolist())}
    result = UpCheck()
    mine = []
    for up in ups:
        if up.model_version == artifact.manifest.model_version and up.vector is not None:
            mine.append(up)
        else:  # another model's, or a model without user vectors (only ALS folds users in)
            result.other_models += 1
    needed: dict[str, set[int]] = defaultdict(set)
    for up in mine:
        if up.source_offset is not None:
            needed[up.id].add(up.source_offset)
    # One walk through each user's events: their strengths as of every offset an UP claims.
    snapshots: dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None] = {}  # None: touched a new item
    for user, offsets in needed.items():
        row = np.zeros(len(index))
        if user in rows:
            row += artifact.interactions[rows[user]].toarray().ravel()
        new_item = False
        for offset, e in history.get(user, []):
            if e.item_id in index:
                row[index[e.item_id]] += weights[e.event_type]
            else:
                new_item = True
            if offset in offsets:
                nz = np.flatnonzero(row)
                snapshots[(user, offset)] = None if new_item else (nz, row[nz])
    wanted: dict[tuple[str, int], int] = {}
    data: list[float] = []
    indices: list[int] = []
    indptr = [0]
    pending: list[tuple[VectorUpdate, int]] = []
    for up in mine:
        key = (up.id, up.source_offset)
        if key not in snapshots:
            result.mismatched.append(f"{up.id}: source offset {up.source_offset} is none of the user's events")
            continue
        snapshot = snapshots[key]
        if snapshot is None:
            result.skipped_new_items += 1
            continue
        if key not in wanted:
            nz, values = snapshot
            data.extend(values)
            indices.extend(nz)
            indptr.append(len(indices))
            wanted[key] = len(wanted)
        pending.append((up, wanted[key]))
    if not pending:
        return result
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(wanted), len(index)))
    expected = FoldIn(artifact.item_factors, cast("ImplicitALS | SparkALS", artifact.model).objective).vectors(matrix)
    got = np.array([up.vector for up, _ in pending], dtype=np.float64)
    want = expected[[r for _, r in pending]]
    close = np.all(np.isclose(got, want, rtol=2e-3, atol=2e-4), axis=1)
    result.checked = len(pending)
    result.users = len({up.id for up, _ in pending})
    for (up, _), ok, g, w in zip(pending, close, got, want, strict=True):
        if not ok:
            result.mismatched.append(f"{up.id}@{up.source_offset}: differs by up to {np.max(np.abs(g - w)):.3g}")
    return result


def check_ups_follow_their_offsets(
    s: Settings, artifact: ModelArtifact, start: int = 0, end: int | None = None
) -> UpCheck:
    """Every user UP published at `model-updates` offsets [start, end) is the fold-in of exactly the events up
    to its source offset. Raises AssertionError otherwise; returns what was checked."""
    result = ups_against_offsets(
        artifact, user_events_after_cutoff(s, artifact), user_updates(s, start, end), s.event_weights
    )
    result.assert_ok()
    return result
