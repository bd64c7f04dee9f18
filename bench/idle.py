"""Idle CPU: what each long-running service costs when nothing happens.

The broker, the archiver, the speed layer and a serving process run as in `make demo` (each its own process,
a published model, the topics in place), some events go through so every consumer has joined its group and
fetched, then nothing is sent for `seconds`; each process's CPU time over that window (utime + stime of all
its threads, /proc/<pid>/stat) divided by the window is its share of one core. Target: <= 2% each.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.speed import bench_settings, build_model
from infra import broker, processes
from recsys.data.synthetic import SyntheticConfig, iter_messages
from recsys.replay import replay

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat


def run(quick: bool, seconds: float | None = None, settle_s: float | None = None) -> dict:
    seconds = seconds or (10.0 if quick else 30.0)
    settle_s = settle_s if settle_s is not None else (30.0 if quick else 90.0)
    with tempfile.TemporaryDirectory(prefix="recsys-bench-idle-") as tmp:
        s = bench_settings(Path(tmp), broker.free_port())
        broker_pid = broker.start(s)
        s = s.model_copy(update={"serving_port": broker.free_port()})  # once the broker holds its two ports
        procs = {}
        try:
            build_model(s, n_users=2_000, n_items=1_000, rank=32, history_events=50_000)
            logs = s.state_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            procs["archiver"] = processes.start("jobs.archiver", s, log=logs / "archiver.log")
            procs["speed layer"] = processes.start(
                "speed_layer", s, "--instance-id", "speed-idle", log=logs / "speed.log"
            )
            procs["serving"] = processes.start("serving", s, log=logs / "serving.log")
            processes.wait_ready(s, procs["serving"], timeout_s=300)
            config = SyntheticConfig(n_events=2_000, n_users=2_000, n_items=1_000, seed=5)
            replay(iter_messages(config, key=s.pseudonym_key_bytes()), settings=s, progress=False)
            time.sleep(settle_s)  # the events are archived and folded in; start-up work and the JIT settle
            pids = {"broker (Kafka JVM)": broker_pid, **{name: p.pid for name, p in procs.items()}}
            assert all(p.poll() is None for p in procs.values()), "a service exited"
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            time.sleep(seconds)
            window = time.monotonic() - started
            used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        finally:
            for proc in procs.values():
                processes.stop(proc)
            broker.stop(s)
    share = {name: round(100 * cpu / window, 2) for name, cpu in used.items()}
    return {
        "window_s": round(window, 1),
        "settle_s": settle_s,
        "cpu_percent_of_one_core": share,
        "target_percent": 2.0,
        "all_within_target": all(v <= 2.0 for v in share.values()),
    }
