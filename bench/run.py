"""`make bench`: measure, side by side in one run, and write `bench/results/latest.json` plus a Markdown report.

    python -m bench.run                 # every section; batch at 1M and 10M synthetic events, both engines
    python -m bench.run --quick         # reduced sizes (batch at 500k), same output file
    python -m bench.run --only serving  # some sections; the others keep their last results
    python -m bench.run --only soak     # the crash soak (`make bench-soak`; not part of a plain run)
    python -m bench.run --sizes 2000000 --engines implicit

Sections: quality (MovieLens-100K, four models), freshness (stale vs speed vs retrain),
batch (pipeline time and memory), speed (events/s, event -> UP latency), serving
(GET /recommend latency and throughput). Each figure carries its unit; the machine's
core count, the commit and the repetitions are in `meta` (per section in
`meta.sections`). Also writes report.md, one PNG plot per section and the README's
Results section. Absolute times on a shared machine are noisy: compare within a run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import typer
from rich.console import Console
from rich.table import Table

from bench import report as bench_report
from bench.plots import write_plots
from recsys.settings import PROJECT_ROOT, Settings

RESULTS = PROJECT_ROOT / "bench" / "results"
console = Console(width=160)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class PeakRss:
    """Samples the resident memory of a process and all its descendants (driver + Spark JVM) in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s, self.peak_bytes = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
                self.peak_bytes = max(self.peak_bytes, sum(_rss(p) for p in tree))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval_s)


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def bench_env(state: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "RECSYS_STATE_DIR": str(state),
        "RECSYS_BROKER_PORT": str(port),
        "RECSYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "RECSYS_PSEUDONYM_KEY": "bench-only-key-" + "0" * 32,
    }


def run_batch(sizes: list[int], engines: list[str], users: int, items: int,
              baseline: str = "") -> tuple[dict, dict | None]:  # fmt: skip
    """Backfill n synthetic events, then time the whole batch pipeline per engine in a fresh child process.

    With `baseline` (a git ref), the same pipeline of that commit runs too, side by side on a copy of the
    same bronze table, from a scratch worktree (e.g. the staging-commit path before Delta went native).
    Returns (this commit's results, the baseline's or None).
    """
    from infra import broker

    results: dict = {engine: {} for engine in engines}
    base: dict | None = None
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as scratch:
        base_tree = _baseline_worktree(baseline, Path(scratch) / "baseline") if baseline else None
        if base_tree:
            base = {"ref": baseline, "commit": _short_commit(base_tree), **{engine: {} for engine in engines}}
        try:
            for n in sizes:
                state = Path(scratch) / f"state-{n}"
                env = bench_env(state, broker.free_port())
                s = Settings(state_dir=state, broker_port=int(env["RECSYS_BROKER_PORT"]),
                             kafka_bootstrap=env["RECSYS_KAFKA_BOOTSTRAP"])  # fmt: skip
                broker.start(s)
                try:
                    console.print(f"[bold]batch[/bold]: backfilling {n:,} synthetic events")
                    backfill = [sys.executable, "-m", "jobs.backfill", "synthetic", "--events", str(n),
                                "--users", str(users), "--items", str(items)]  # fmt: skip
                    subprocess.run(backfill, env=env, check=True, cwd=PROJECT_ROOT, stderr=subprocess.DEVNULL)
                    base_env = None
                    if base_tree:  # the same bronze, before any job of this commit touched the lake
                        base_state = Path(scratch) / f"baseline-state-{n}"
                        shutil.copytree(state / "lake" / "bronze_events", base_state / "lake" / "bronze_events")
                        base_env = {**bench_env(base_state, s.broker_port), "PYTHONPATH": str(base_tree)}
                    for engine in engines:
                        results[engine][str(n)] = _time_pipeline(engine, n, env)
                        if base_env and base is not None:
                            base[engine][str(n)] = _time_pipeline(engine, n, base_env, cwd=base_tree)
                            base[engine][str(n)]["this_commit"] = {k: results[engine][str(n)][k]
                                                                   for k in ("seconds", "steps_s")}  # fmt: skip
                finally:
                    broker.stop(s)
                    shutil.rmtree(state, ignore_errors=True)
        finally:
            if base_tree:
                subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=PROJECT_ROOT,
                               capture_output=True)  # fmt: skip
    return results, base


def _baseline_worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=PROJECT_ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return where


def _short_commit(tree: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return out.stdout.strip()


def _time_pipeline(engine: str, n: int, env: dict[str, str], cwd: Path = PROJECT_ROOT) -> dict:
    where = "" if cwd == PROJECT_ROOT else f" (baseline, {cwd})"
    console.print(f"[bold]batch[/bold]: {engine} pipeline on {n:,} events{where}")
    cmd = [sys.executable, "-m", "bench.batch_pipeline", "--engine", engine]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRss(proc.pid) as rss:
        out, err = proc.communicate()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} pipeline failed:\n{err[-3000:]}")
    detail = json.loads(out.strip().splitlines()[-1])
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(rss.peak_bytes / 2**20),
        "events_per_s": round(n / seconds),
        **detail,
    }


def meta(quick: bool, repetitions: dict) -> dict:
    # `--dirty`: a result measured with uncommitted changes says so.
    commit = subprocess.run(["git", "describe", "--always", "--dirty=+uncommitted"], capture_output=True, text=True,
                            cwd=PROJECT_ROOT)  # fmt: skip
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "git_commit": commit.stdout.strip() or "unknown",
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "repetitions": repetitions,
    }


def batch_table(batch: dict, title: str = "batch pipeline (clean + train + evaluate + publish), one run each") -> Table:
    table = Table(title=title)
    for col in ("engine", "events", "seconds", "events/s", "peak RSS MB", "train s", "evaluate s", "NDCG@10",
                "popularity", "BLAS"):  # fmt: skip
        table.add_column(col, justify="right")
    for engine, by_size in batch.items():
        for n, r in by_size.items():
            table.add_row(engine, f"{int(n):,}", f"{r['seconds']:.0f}", f"{r['events_per_s']:,}",
                          f"{r['peak_rss_mb']:,}", f"{r['steps_s']['train']:.0f}", f"{r['steps_s']['evaluate']:.0f}",
                          f"{r['ndcg@10']:.3f}", f"{r['popularity_ndcg@10']:.3f}", r["blas"])  # fmt: skip
    return table


def quality_table(q: dict) -> Table:
    table = Table(title="quality on MovieLens-100K, per-user time split, k=10")
    for col in ("model", "P@10", "R@10", "NDCG@10", "MAP@10", "AUC"):
        table.add_column(col, justify="right")
    for model in bench_report.QUALITY_MODELS:
        r = q[model]
        table.add_row(model, *(f"{r[key]:.4f}" for key in ("precision@10", "recall@10", "ndcg@10", "map@10", "auc")))
    return table


def freshness_table(f: dict) -> Table:
    share = f.get("recovered_share")
    table = Table(title=f"freshness: speed layer recovers {'n/a' if share is None else f'{share:.0%}'} of the gain")
    for col in ("model", "NDCG@10", "R@10"):
        table.add_column(col, justify="right")
    for name in ("stale", "speed", "retrain"):
        table.add_row(name, f"{f[name]['ndcg@10']:.4f}", f"{f[name]['recall@10']:.4f}")
    return table


def serving_table(sv: dict) -> Table:
    table = Table(title=f"serving GET /recommend, {sv['n_items']:,} items, rank {sv['rank']}, top-{sv['k']}")
    for col in ("index/replicas", "max req/s", "offered", "p50 ms", "p99 ms", "errors", "RSS MB"):
        table.add_column(col, justify="right")
    for mode, r in sv["modes"].items():
        table.add_row(mode, f"{r['max_requests_per_s']:,}", f"{r['offered_rate']:,}", f"{r['p50_ms']}",
                      f"{r['p99_ms']}", f"{r['errors']}", f"{r['rss_mb']:,}")  # fmt: skip
    return table


def speed_table(speed: dict) -> Table:
    table = Table(title=f"speed layer, rank {speed['rank']}, {speed['n_items']:,} items, one process")
    for col in ("events/s (backlog drain)", "latency p50 ms @1k/s", "latency p99 ms @1k/s", "solve µs/user",
                "mean history length"):  # fmt: skip
        table.add_column(col, justify="right")
    table.add_row(f"{speed['events_per_s']:,}", f"{speed['latency_ms_p50']}", f"{speed['latency_ms_p99']}",
                  f"{speed['solve_us_per_user']}", f"{speed['history_len_mean']}")  # fmt: skip
    return table


@app.command()
def main(
    quick: bool = typer.Option(False, help="Reduced sizes (minutes, not tens of minutes)."),
    only: str = typer.Option("quality,freshness,batch,speed,serving", help="Comma-separated sections to run."),
    sizes: str = typer.Option("", help="Comma-separated event counts for the batch section."),
    engines: str = typer.Option("spark_als,implicit", help="Comma-separated training engines."),
    baseline: str = typer.Option("", help="Also run the batch pipeline of this git ref (a scratch worktree), "
                                 "side by side on the same data: e.g. the staging-commit path before native Delta."),
) -> None:
    """Run the benchmarks and write bench/results/latest.json and report.md."""
    sections = set(only.split(","))
    results: dict = {}
    repetitions: dict = {}
    # The commit (and whether the tree was dirty) as the run starts: what is measured, whatever is committed meanwhile.
    run_meta = meta(quick, repetitions)
    if "quality" in sections:
        from bench import quality

        results["quality"] = quality.run(quick)
        repetitions["quality"] = 1
        console.print(quality_table(results["quality"]))
    if "freshness" in sections:
        from bench import freshness

        results["freshness"] = freshness.run(quick)
        repetitions["freshness"] = 1
        console.print(freshness_table(results["freshness"]))
    if "batch" in sections:
        chosen = [int(x) for x in sizes.split(",") if x] or ([500_000] if quick else [1_000_000, 10_000_000])
        results["batch"], base = run_batch(chosen, [e for e in engines.split(",") if e], users=100_000,
                                           items=50_000, baseline=baseline)  # fmt: skip
        repetitions["batch"] = 1
        console.print(batch_table(results["batch"]))
        if base is not None:
            results["batch_baseline"] = base
            repetitions["batch_baseline"] = 1
            console.print(batch_table({k: v for k, v in base.items() if k not in ("ref", "commit")},
                                      title=f"the same pipeline at {base['commit']} (baseline)"))  # fmt: skip
    if "speed" in sections:
        from bench import speed

        results["speed_layer"] = speed.run(quick)
        repetitions["speed_layer"] = {"throughput": 1, "latency": 1, "solve": results["speed_layer"]["repetitions"]}
        console.print(speed_table(results["speed_layer"]))
    if "soak" in sections:
        from bench import soak

        results["soak"] = soak.run(quick)
        repetitions["soak"] = 1
        console.print(f"soak: {results['soak']}")
    if "serving" in sections:
        from bench import serving

        results["serving"] = serving.run(quick)
        repetitions["serving"] = 1
        console.print(serving_table(results["serving"]))
    # Sections not run this time keep their last results; `meta.sections` says when each was measured.
    latest = RESULTS / "latest.json"
    merged = json.loads(latest.read_text()) if latest.exists() else {}
    sections_meta = merged.get("meta", {}).get("sections", {})
    for name in merged:  # sections from a file written before per-section meta existed
        if name != "meta" and name not in sections_meta:
            sections_meta[name] = {k: v for k, v in merged["meta"].items() if k != "sections"}
    sections_meta.update({name: run_meta for name in results})
    if "batch_baseline" in results:  # measured in this run, but the code is the baseline commit's
        sections_meta["batch_baseline"] = {**run_meta, "git_commit": results["batch_baseline"]["commit"]}
    merged.update(results)
    merged["meta"] = {**run_meta, "sections": sections_meta}
    results = merged
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(results, indent=2))
    report = bench_report.write(results, RESULTS)
    pictures = write_plots(results, RESULTS)
    console.print(f"wrote {latest}, {report}, {', '.join(p.name for p in pictures)} and the README's Results section")


if __name__ == "__main__":
    app()
