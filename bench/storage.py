"""The batch pipeline with the lake and models on the local disk and on HDFS, side by side; swap-in from each.

One Kafka broker and one single-node HDFS (infra/hdfs.py) serve both runs. Each run gets a fresh state
folder and the same synthetic events (same seed), backfilled into its own lake: on local disk, or at
`hdfs://127.0.0.1:<port>/recsys/lake` with the models at `.../recsys/models` (RECSYS_LAKE_URI,
RECSYS_MODELS_URI). The pipeline (clean, train, evaluate, publish) runs in a child process, as in the batch
section. Then a replica's swap-in is timed on the published model, as `serving.follower` does it: load the
model from its location (a local model memory-mapped; an HDFS one copied to a local temporary folder and read
whole) and the catalogue, and build the `ServingModel`. Median of `SWAPS` loads, in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from bench.run import _time_pipeline, bench_env
from infra import broker, hdfs
from recsys.settings import PROJECT_ROOT, Settings

console = Console(width=160)
SWAPS = 5
STORAGES = ("local", "hdfs")
STEPS = ("clean", "train", "evaluate", "publish")


def run(n: int, engine: str, users: int, items: int) -> dict:
    """{"local": {...}, "hdfs": {...}, "hdfs_over_local": ratios}: pipeline time, memory, steps, swap-in."""
    out: dict = {"params": {"events": n, "engine": engine, "users": users, "items": items, "swaps": SWAPS}}
    with tempfile.TemporaryDirectory(prefix="recsys-bench-storage-") as scratch:
        services = Settings(
            state_dir=Path(scratch) / "services",
            kafka_bootstrap=f"127.0.0.1:{broker.free_port()}",
            hdfs_port=broker.free_port(),
        )
        broker.start(services)
        hdfs.start(services)
        try:
            for storage in STORAGES:
                env = bench_env(Path(scratch) / f"state-{storage}", int(services.kafka_bootstrap.split(":")[1]))
                if storage == "hdfs":
                    env["RECSYS_LAKE_URI"] = hdfs.url(services, "/recsys/lake")
                    env["RECSYS_MODELS_URI"] = hdfs.url(services, "/recsys/models")
                _backfill(n, users, items, env)
                out[storage] = _time_pipeline(engine, n, env)
                out[storage]["swap_in_s"] = _swap_in(env)
        finally:
            hdfs.stop(services)
            broker.stop(services)
    local, remote = out["local"], out["hdfs"]
    out["hdfs_over_local"] = {
        "pipeline": round(remote["seconds"] / local["seconds"], 2),
        **{step: round(remote["steps_s"][step] / max(local["steps_s"][step], 1e-6), 2) for step in STEPS},
        "swap_in": round(remote["swap_in_s"]["median"] / local["swap_in_s"]["median"], 2),
    }
    return out


def _backfill(n: int, users: int, items: int, env: dict[str, str]) -> None:
    where = env.get("RECSYS_LAKE_URI") or "the local lake"
    console.print(f"[bold]storage[/bold]: backfilling {n:,} synthetic events into {where}")
    cmd = [
        sys.executable,
        "-m",
        "jobs.backfill",
        "synthetic",
        "--events",
        str(n),
        "--users",
        str(users),
        "--items",
        str(items),
    ]
    subprocess.run(cmd, env=env, check=True, cwd=PROJECT_ROOT, stderr=subprocess.DEVNULL)


SWAP_IN = """
import json, statistics, sys, time
import fsspec
from recsys.data import catalog
from recsys.io import model_store
from recsys.settings import get_settings
from serving.model import ServingModel
s = get_settings()
location = model_store.latest_published(s)
times = []
for _ in range(int(sys.argv[1])):
    started = time.monotonic()
    model = ServingModel(model_store.load_from(location, s), catalog.read(s), s)
    times.append(time.monotonic() - started)
fs, path = fsspec.core.url_to_fs(str(location))
print(json.dumps({"median": statistics.median(times), "runs": times, "location": str(location),
                  "model_mb": fs.du(path) / 2**20}))
"""


def _swap_in(env: dict[str, str]) -> dict:
    """A fresh process (nothing cached in Python) loads the published model SWAPS times, as a replica would."""
    proc = subprocess.run(
        [sys.executable, "-c", SWAP_IN, str(SWAPS)],
        env=env,
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["median"] = round(result["median"], 3)
    result["runs"] = [round(t, 3) for t in result["runs"]]
    result["model_mb"] = round(result["model_mb"], 1)
    return result


def table_rows(r: dict) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for storage in STORAGES:
        x = r[storage]
        rows.append(
            (
                storage,
                f"{r['params']['events']:,}",
                f"{x['seconds']:.0f}",
                f"{x['steps_s']['clean']:.0f}",
                f"{x['steps_s']['train']:.0f}",
                f"{x['steps_s']['evaluate']:.0f}",
                f"{x['steps_s']['publish']:.2f}",
                f"{x['peak_rss_mb']:,}",
                f"{x['swap_in_s']['median']:.2f}",
                f"{x['ndcg@10']:.3f}",
            )
        )
    ratio = r["hdfs_over_local"]
    steps = [f"{ratio[step]:.2f}x" for step in STEPS]
    rows.append(("hdfs / local", "", f"{ratio['pipeline']:.2f}x", *steps, "", f"{ratio['swap_in']:.2f}x", ""))
    return rows
