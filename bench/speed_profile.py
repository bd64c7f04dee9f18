"""Where the speed layer's time goes: its loop against a real broker, split by phase (timers, or cProfile).

    .venv/bin/python -m bench.speed_profile                      # backlog drain, then 1,000 events/s
    .venv/bin/python -m bench.speed_profile --rate 5000 --drain 0

Same model shape and synthetic events as the speed section (bench/speed.py). The drain reads a backlog as fast
as it can; the at-rate run paces events from another process (so its producer is not in the profile) while
the layer runs here. Each run prints wall time per phase (cumulative time of the functions that do it, in the
layer's thread: kafka-python's sender and heartbeat threads are not in it, waiting for them is) and the
event -> acknowledged-UP latency the layer itself sees, per micro-batch size.
"""

from __future__ import annotations

import cProfile
import multiprocessing
import pstats
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.kafka_reference import kafka_python_consume
from bench.speed import bench_settings, build_model, publish_cutoff
from recsys import protocol
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.io import model_store
from recsys.io.kafka import end_offsets
from recsys.protocol import Topics
from recsys.replay import replay
from recsys.settings import Settings
from speed_layer import service
from speed_layer.service import SpeedLayer, one_blas_thread
from speed_layer.state import Updates
from speed_layer.tracks import Track

N_USERS, N_ITEMS, RANK = 20_000, 50_000, 64

# Phase -> (file suffix, function name) whose cumulative thread CPU time it is.
PHASES: list[tuple[str, tuple[str, str]]] = [
    ("loop turn (total)", ("speed_layer/service.py", "cycle")),
    ("new-model check (reads model-updates)", ("speed_layer/service.py", "_check_for_new_model")),
    ("micro-batch (step)", ("speed_layer/service.py", "step")),
    ("poll (fetch, decode)", ("kafka/consumer/group.py", "poll")),
    ("  of which record decode", ("kafka/consumer/fetcher.py", "_unpack_records")),
    ("control headers + markers", ("speed_layer/service.py", "forget_markers")),
    ("validate", ("recsys/contracts/event_columns.py", "validate_batch")),
    ("state: apply (all)", ("speed_layer/state.py", "apply")),
    ("  context building", ("speed_layer/state.py", "context")),
    ("  history matrix", ("recsys/models/als.py", "history_matrix")),
    ("  fold-in solve: users", ("recsys/models/als.py", "users")),
    ("  fold-in solve: new items", ("recsys/models/als.py", "new_items")),
    ("UP encoding", ("recsys/protocol.py", "encode_up")),
    ("produce: send", ("kafka/producer/kafka.py", "send")),
    ("produce: record batches", ("speed_layer/publish.py", "send")),
    ("produce: flush", ("kafka/producer/kafka.py", "flush")),
    ("commit", ("speed_layer/service.py", "_commit")),
    ("metrics", ("prometheus_client/metrics.py", "observe")),
]


def phase_table(stats: pstats.Stats, events: int) -> list[tuple[str, float, float]]:
    """(phase, CPU seconds, CPU µs per event) from a thread-CPU profile's cumulative times."""
    found: dict[tuple[str, str], float] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for _, (suffix, function) in PHASES:
            if name == function and filename.endswith(suffix):
                found[suffix, function] = found.get((suffix, function), 0.0) + cumulative
    return [(label, found.get(key, 0.0), found.get(key, 0.0) / max(events, 1) * 1e6) for label, key in PHASES]


class PhaseTimers:
    """Wall and thread-CPU seconds per phase, by wrapping the functions that do it (no profiler overhead).

    Nested phases count in their parent too; "wait" is wall minus CPU (poll timeouts, acks, the GIL).
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.order: list[str] = []

    def wrap(self, owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)
        self.order.append(label)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - wall
                self.cpu[label] = self.cpu.get(label, 0.0) + time.thread_time() - cpu

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()

    def table(self, events: int) -> str:
        rows = ["| phase | wall s | CPU s | wait s | CPU µs per event |", "| --- | ---: | ---: | ---: | ---: |"]
        for label in self.order:
            wall, cpu = self.wall.get(label, 0.0), self.cpu.get(label, 0.0)
            rows.append(f"| {label} | {wall:.2f} | {cpu:.2f} | {wall - cpu:.2f} | {cpu / max(events, 1) * 1e6:.1f} |")
        return "\n".join(rows)


def publish_challenger_copy(s: Settings) -> str:
    """The published model again, under a new version in the challengers' folder (the same offsets): what the
    speed layer does for an ALS challenger, the same work as for the champion. Returns its version."""
    published = model_store.latest_published(s)
    assert published is not None
    artifact = model_store.load_from(published, s)
    version = protocol.new_version(model="challenger")
    artifact.manifest = artifact.manifest.model_copy(update={"model_version": version})
    model_store.promote(model_store.save_candidate(artifact, s), s, as_challenger=True)
    return version


def instrument(layer: SpeedLayer) -> PhaseTimers:
    from recsys.models import als
    from speed_layer import service, state

    timers = PhaseTimers()
    timers.wrap(layer, "cycle", "loop turn (total)")
    timers.wrap(layer, "_check_for_new_model", "new-model check (reads model-updates)")
    timers.wrap(layer, "step", "micro-batch (step)")
    timers.wrap(layer.events, "poll", "poll (fetch wait, decode)")
    timers.wrap(service, "forget_markers", "control headers, FORGET markers")
    timers.wrap(service, "validate_batch", "validate")
    timers.wrap(state.SpeedState, "apply", "state: apply (all of the below)")
    timers.wrap(state.SpeedState, "context", "  user contexts")
    timers.wrap(als, "history_matrix", "  history matrix")
    timers.wrap(als.FoldIn, "vectors", "  fold-in solves (users and new items)")
    timers.wrap(state.SpeedState, "_fold_new_items", "  new items (their solve included)")
    # The sends' module: speed_layer.publish (record batches) here; the stock per-record send on older code.
    sends = getattr(service, "publish", service)
    # UPs are encoded as the producer takes them (a generator, speed_layer/service.py), so the publish phase holds
    # their encoding; timed per call (about 1 µs per UP of timer on top).
    timers.wrap(sends, "send_acknowledged", "publish: encode, send, flush until acknowledged")
    timers.wrap(protocol, "encode_up", "  UP encoding (encode_up)")
    timers.wrap(layer.producer, "flush", "  flush (waiting for acks)")
    timers.wrap(layer, "_commit", "commit")
    timers.wrap(layer, "_report_lag", "lag report")
    return timers


class _TimedLayer(SpeedLayer):
    """Records, per published batch, its size and each user's event -> acknowledged-UP time."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.latencies_ms: list[float] = []
        self.batch_sizes: list[int] = []
        self.busy_step_ms: list[float] = []  # wall time of each step that read records
        self.turns: list[tuple[float, float, int]] = []  # (start, end, records) of every turn of the loop
        self.created_ms: dict[int, tuple[float, float]] = {}  # turn -> its events' oldest and newest Kafka timestamp
        self.ups = 0

    def publish(
        self, updates: Updates, source_offsets: dict[str, int] | None = None, track: Track | None = None
    ) -> None:
        super().publish(updates, source_offsets, track)
        now_ms = time.time() * 1000
        self.ups += len(updates)
        if track is None or track.key_version is None:  # the champion's: a challenger's UPs go out after them
            self.latencies_ms += [now_ms - ts for (kind, _), ts in updates.source_ts_ms.items() if kind == "user"]
            if updates.source_ts_ms:
                created = updates.source_ts_ms.values()
                self.created_ms[len(self.turns)] = (min(created), max(created))

    def cycle(self) -> int:
        started = time.perf_counter()
        n = super().cycle()
        self.turns.append((started, time.perf_counter(), n))
        if n:
            self.batch_sizes.append(n)
            self.busy_step_ms.append((time.perf_counter() - started) * 1000)
        return n


def largest_batch(layer: _TimedLayer) -> str:
    """Where the largest micro-batch came from: the turns before it (a long one held the loop, or empty polls while
    events were on their way) and when its events were produced (Kafka timestamps, against the wall clock)."""
    turns = layer.turns
    at = max(range(len(turns)), key=lambda i: turns[i][2])
    # "Into the run" from the first turn that read records: the turns before it waited for the feeder to start
    # (a spawned process: ~2-3 s), and counting them made the feeder's first burst look like a pause mid-run.
    begun = next(start for start, _, k in turns if k)
    start, end, n = turns[at]
    before = turns[max(0, at - 3) : at]
    held = ", ".join(f"{(e - b) * 1000:.0f} ms ({k} records)" for b, e, k in before)
    created = layer.created_ms.get(at)
    produced = ""
    if created is not None:
        oldest, newest = created
        offset_ms = time.time() * 1000 - time.perf_counter() * 1000  # perf_counter -> epoch ms, near enough
        produced = (
            f"; its events produced over {newest - oldest:.0f} ms, the oldest {start * 1000 + offset_ms - oldest:.0f}"
            " ms before its poll began"
        )
    return (
        f"largest micro-batch: {n} records, {start - begun:.1f} s into the run, its step"
        f" {(end - start) * 1000:.0f} ms; the turns before it: {held or 'none'}{produced}"
    )


def _paced(s: Settings, n_events: int, rate: float, seed: int) -> None:
    events = iter_messages(
        SyntheticConfig(n_events=n_events, n_users=N_USERS, n_items=N_ITEMS, seed=seed), key=s.pseudonym_key_bytes()
    )
    replay(events, rate=rate, settings=s, progress=False)


def _read_to(layer: SpeedLayer, ends: dict[int, int]) -> bool:
    assigned = layer.events.assignment()
    return bool(assigned) and all(layer.events.position(tp) >= ends.get(tp.partition, 0) for tp in assigned)


def profile_run(layer: _TimedLayer, s: Settings, label: str, n_events: int, rate: float, options: dict) -> None:
    """Drain `n_events` (rate 0) or read them paced at `rate`; print the split (timers, or cProfile's)."""
    layer.latencies_ms.clear()
    layer.batch_sizes.clear()
    layer.busy_step_ms.clear()
    layer.turns.clear()
    layer.created_ms.clear()
    layer.ups = 0
    feeder = None
    backlog_from: dict[int, int] = {}
    backlog_to: dict[int, int] = {}
    if rate > 0:
        feeder = multiprocessing.get_context("spawn").Process(target=_paced, args=(s, n_events, rate, 300))
        feeder.start()
    else:
        backlog_from = end_offsets(Topics.EVENTS, s)
        _paced(s, n_events, 0, 301)
        backlog_to = end_offsets(Topics.EVENTS, s)
    n = 0
    while rate > 0 and n == 0:  # the feeder's start-up is not the layer's time
        n = layer.cycle()
    timers: PhaseTimers | None = options["timers"]
    profiler = None if timers else cProfile.Profile(time.thread_time)  # CPU of this thread: waits are not in it
    if timers:
        timers.reset()
    cpu, thread_cpu, started = time.process_time(), time.thread_time(), time.monotonic()
    if profiler:
        profiler.enable()
    while True:
        n += layer.cycle()
        # The drain's end is known before it starts; asking the broker (a consumer of its own) is for paced runs.
        if n >= n_events and _read_to(layer, backlog_to if rate == 0 else end_offsets(Topics.EVENTS, s)):
            break
    if profiler:
        profiler.disable()
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    thread_cpu = time.thread_time() - thread_cpu
    if feeder is not None:
        feeder.join()
    else:  # the yardstick, side by side: a bare kafka-python consumer reading the same records
        bare = kafka_python_consume(s, backlog_from, backlog_to)
        print(
            f"\nbare kafka-python consumer over the same records: {bare['records_per_s']:,} records/s; "
            f"the drain's rate is {n / wall / bare['records_per_s']:.2f} of it"
        )
    print(
        f"\n## {label}: {n} records in {wall:.2f} s wall ({n / wall:,.0f}/s); CPU: {thread_cpu:.2f} s the layer's "
        f"thread, {cpu:.2f} s the process (kafka-python's I/O threads too); waiting: {wall - thread_cpu:.2f} s"
    )
    sizes = np.array(layer.batch_sizes)
    print(
        f"micro-batches: {len(sizes)}, records per batch median {np.median(sizes):.0f}, max {sizes.max()}; "
        f"a step that read records: median {np.median(layer.busy_step_ms):.1f} ms, "
        f"p99 {np.percentile(layer.busy_step_ms, 99):.1f} ms wall; UPs {layer.ups}"
    )
    print(largest_batch(layer))
    if layer.latencies_ms:
        ms = np.array(layer.latencies_ms)
        print(
            f"event -> acknowledged UP, as the layer sees it: p50 {np.percentile(ms, 50):.1f} ms, "
            f"p99 {np.percentile(ms, 99):.1f} ms"
        )
    print()
    if timers:
        print(timers.table(n))
        return
    assert profiler is not None
    stats = pstats.Stats(profiler)
    print("| phase (the layer's thread, under cProfile) | CPU s | CPU µs per event |\n| --- | ---: | ---: |")
    for phase, seconds, per_event in phase_table(stats, n):
        print(f"| {phase} | {seconds:.2f} | {per_event:.1f} |")
    print()
    stats.sort_stats("tottime").print_stats(options["top"])
    if options["save"]:
        stats.dump_stats(f"{options['save']}.{label.split()[0]}.prof")


def main(
    drain: int = typer.Option(50_000, help="Backlog events to drain (0: skip)."),
    rate: Annotated[
        list[float] | None, typer.Option(help="Events/s of a paced run (repeatable; default 1000).")
    ] = None,
    seconds: float = typer.Option(10, help="Length of each paced run."),
    blas_threads_of_one: bool = typer.Option(True, help="As the service runs (speed_layer.service.one_blas_thread)."),
    gc_as_served: bool = typer.Option(True, help="As the service runs (speed_layer.service.fewer_collections)."),
    cprofile: bool = typer.Option(False, help="cProfile (thread CPU) instead of the phase timers: slower, finer."),
    top: int = typer.Option(25, help="With --cprofile: functions by own time to print under each table."),
    save: str = typer.Option("", help="With --cprofile: write each run's pstats to <save>.<run>.prof."),
    challenger: bool = typer.Option(False, help="Name a copy of the model as an A/B challenger: two states."),
) -> None:
    from infra import broker

    with tempfile.TemporaryDirectory(prefix="recsys-speed-profile-") as tmp:
        s = bench_settings(Path(tmp), broker.free_port())
        broker.start(s)
        layer = None
        try:
            build_model(s, N_USERS, N_ITEMS, RANK, history_events=300_000)
            publish_cutoff(s)
            if challenger:
                s = s.model_copy(update={"ab_challenger_version": publish_challenger_copy(s)})
            if blas_threads_of_one:
                one_blas_thread()
            if gc_as_served and hasattr(service, "fewer_collections"):  # older code: Python's default thresholds
                service.fewer_collections()
            layer = _TimedLayer(s, "speed-profile")
            layer.wait_for_model()
            while not layer.events.assignment():  # the group join is not the layer's steady state
                layer.cycle()
            assert layer.challenger is not None or not challenger
            options = {"timers": None if cprofile else instrument(layer), "top": top, "save": save}
            if drain:
                profile_run(layer, s, "backlog drain", drain, 0, options)
            for r in (r for r in rate or [1_000] if r > 0):
                profile_run(layer, s, f"paced at {r:,.0f} events/s", int(r * seconds), r, options)
        finally:
            if layer is not None:
                layer.close()
            broker.stop(s)


if __name__ == "__main__":
    typer.run(main)
