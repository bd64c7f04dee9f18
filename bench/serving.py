"""Serving benchmark: GET /recommend through the real HTTP process, load from a separate process.

One model (100,000 items, rank 64, fitted by the implicit engine on synthetic
events), served three ways side by side in one run, each in a fresh server process:

- `exact`: the default; one matrix-vector product and a bounded partial selection;
- `full_sort`: the naive baseline, every score sorted per request;
- `approximate`: faiss IVF; its recall@10 against `exact` is measured on the same users.

Per mode: the most requests/s sustained (closed loop), latency percentiles at a fixed
offered rate (open loop, 1,000/s or half the mode's maximum if lower), and the
server's resident memory after the runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bench.speed import build_model
from infra import processes
from recsys.data import catalog
from recsys.io import model_store
from recsys.settings import PROJECT_ROOT, Settings
from serving.model import ServingModel

# (index, replicas): the default (exact, one process), then each index with one replica per core.
MODES = (("exact", 1), ("exact", 2), ("full_sort", 2), ("approximate", 2))


def _loadgen(url: str, paths: Path, connections: int, seconds: float, rate: float = 0) -> dict:
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--paths-file", str(paths),
           "--connections", str(connections), "--seconds", str(seconds), "--rate", str(rate)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _two_free_ports() -> int:
    """A port p on 127.0.0.1 with p + 1 free too (one per replica)."""
    from infra.broker import free_port

    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _paths(s: Settings, users: list[str], k: int) -> Path:
    path = s.state_dir / "paths.txt"
    path.write_text("".join(f"/recommend/{u}?k={k}\n" for u in users))
    return path


def measure_mode(s: Settings, mode: str, replicas: int, paths: Path, seconds: float, rate: float) -> dict:
    """`replicas` serving processes on their own ports, connections spread evenly over them, as a load balancer
    would (uvicorn's `--workers` share one socket and the kernel decides which takes each connection)."""
    configs = [
        s.model_copy(update={"serving_index": mode, "serving_port": s.serving_port + i}) for i in range(replicas)
    ]
    procs = [processes.start("serving", c, log=s.state_dir / f"serving-{mode}-{i}.log") for i, c in enumerate(configs)]
    try:
        started = time.monotonic()
        for c, proc in zip(configs, procs, strict=True):
            processes.wait_ready(c, proc, timeout_s=300)
        ready_s = time.monotonic() - started
        url = ",".join(processes.serving_url(c) for c in configs)
        closed = _loadgen(url, paths, connections=8, seconds=seconds)
        # Latency at the target rate, or at half of what this mode sustains if that is less (near capacity
        # the queue grows for the whole run and the percentiles only measure the run's length).
        offered = min(rate, round(0.5 * closed["requests_per_s"]))
        open_loop = _loadgen(url, paths, connections=32, seconds=seconds, rate=offered)
        rss = sum(psutil.Process(p.pid).memory_info().rss for p in procs)  # mapped factor pages count per process
    finally:
        for proc in procs:
            processes.stop(proc)
    return {
        "max_requests_per_s": closed["requests_per_s"],
        "closed_loop": closed,
        "at_rate": open_loop,
        "offered_rate": offered,
        "p50_ms": open_loop["latency_ms"]["p50"],
        "p99_ms": open_loop["latency_ms"]["p99"],
        "errors": closed["errors"] + open_loop["errors"],
        "rss_mb": round(rss / 2**20),
        "start_to_ready_s": round(ready_s, 1),
    }


def approximate_recall(s: Settings, users: list[str], k: int = 10) -> dict:
    """recall@k of the approximate index against the exact scan, same model, same users, in process."""
    artifact = model_store.load(model_store.latest_published(s))
    exact = ServingModel(artifact, {}, s.model_copy(update={"serving_index": "exact"}))
    approx = ServingModel(artifact, {}, s.model_copy(update={"serving_index": "approximate"}))
    hits = [len(set(approx.recommend(u, k).item_ids) & set(exact.recommend(u, k).item_ids)) / k for u in users]
    return {"recall@10": round(float(np.mean(hits)), 4), "users": len(users), "lists": approx.index.lists,
            "probes": s.serving_ann_probes}  # fmt: skip


def run(quick: bool) -> dict:
    from infra import broker

    n_users, n_items, rank = (20_000, 100_000, 64)
    seconds, rate = (5, 1_000) if quick else (15, 1_000)
    with tempfile.TemporaryDirectory(prefix="recsys-bench-serving-") as tmp:
        s = Settings(state_dir=Path(tmp), kafka_bootstrap=f"127.0.0.1:{broker.free_port()}",
                     serving_port=_two_free_ports(), pseudonym_key="bench-only-key-" + "0" * 32)  # fmt: skip
        broker.start(s)
        try:
            # A flatter popularity than the default so that (nearly) every one of the 100k items is in the model.
            artifact = build_model(s, n_users, n_items, rank, history_events=1_000_000 if quick else 3_000_000,
                                   zipf_exponent=0.5)  # fmt: skip
            catalog.write(catalog.synthetic(n_items, 20), s)
            rng = np.random.default_rng(7)
            users = rng.choice(artifact.user_ids, size=2_000, replace=False).tolist()
            paths = _paths(s, users, k=10)
            result: dict = {"rank": rank, "n_items": len(artifact.item_ids), "n_users": len(artifact.user_ids),
                            "k": 10, "offered_rate": rate, "seconds_per_run": seconds, "modes": {}}  # fmt: skip
            for mode, replicas in MODES:
                result["modes"][f"{mode}/{replicas}"] = measure_mode(s, mode, replicas, paths, seconds, rate)
            result["approximate"] = approximate_recall(s, users[:500])
        finally:
            broker.stop(s)
    modes = result["modes"]
    # The headline figures: the default configuration (exact top-k, one worker process).
    config = "exact/1" if "exact/1" in modes else next(iter(modes))
    headline = modes[config]
    result.update({"config": config, "rps": headline["max_requests_per_s"], "p50_ms": headline["p50_ms"],
                   "p99_ms": headline["p99_ms"]})  # fmt: skip
    if {"exact/2", "full_sort/2"} <= set(modes):
        ratio = modes["exact/2"]["max_requests_per_s"] / modes["full_sort/2"]["max_requests_per_s"]
        result["speedup_vs_full_sort"] = round(ratio, 2)
    return result
