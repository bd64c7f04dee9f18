"""`make bench`: measure, side by side in one run, and write `bench/results/latest.json` plus a Markdown report.

    python -m bench.run                 # every section; batch at 1M and 10M synthetic events, both engines
    python -m bench.run --quick         # reduced sizes (batch at 500k), same output file
    python -m bench.run --only serving  # some sections; the others keep their last results
    python -m bench.run --only soak     # the crash soak (`make bench-soak`; not part of a plain run)
    python -m bench.run --sizes 2000000 --engines implicit_als

Sections: quality (MovieLens-100K, every recommender, 3 seeds, ties ordered and shuffled),
freshness (stale vs real time vs retrain, per recommender), reactivity (top-10 change after
one view; cold items), neural (next-item recall/MRR of SR-GNN vs transitions and ALS, neural
training time at 1M events, serving latency at 100k items), batch (pipeline time and memory),
storage (the batch pipeline at 1M events with the lake and models on local disk, then on a local HDFS,
and a replica's swap-in time of the published model from each),
speed (events/s, event -> UP latency, next to a bare kafka-python consumer and Kafka's
ConsumerPerformance / ProducerPerformance on the same broker), idle (CPU of each service with
no traffic), serving (GET /recommend latency and throughput), candidates (the hybrid's two-stage
serving against its dense scores: same top 10, NDCG@10, cost per user), scale (the hybrid next to ALS
through the HTTP server at 100k and 1M items: throughput, p99 at one offered rate, their ratio),
availability (an item marked unavailable: time until it is out of every answer, at 500 requests/s).
Each figure carries its unit.
Every section records, when it *starts*, the commit it runs on and the time (`meta.sections`);
a tree with uncommitted changes is refused unless `--allow-dirty`, and then marked. Also
writes report.md (which the README links) and one PNG plot per section. Absolute
times on a shared machine are noisy: compare within a run.
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
        "RECSYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "RECSYS_PSEUDONYM_KEY": "bench-only-key-" + "0" * 32,
    }


def _bench_spark():
    """A local Spark session for the sections that train Spark's ALS in this process."""
    from recsys.io.spark import get_spark

    spark = get_spark("bench")
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_batch(
    sizes: list[int], engines: list[str], users: int, items: int, baseline: str = ""
) -> tuple[dict, dict | None]:
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
                port = broker.free_port()
                env = bench_env(state, port)
                s = Settings(state_dir=state, kafka_bootstrap=env["RECSYS_KAFKA_BOOTSTRAP"])
                broker.start(s)
                try:
                    console.print(f"[bold]batch[/bold]: backfilling {n:,} synthetic events")
                    backfill = [
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
                    subprocess.run(backfill, env=env, check=True, cwd=PROJECT_ROOT, stderr=subprocess.DEVNULL)
                    base_env = None
                    if base_tree:  # the same bronze, before any job of this commit touched the lake
                        base_state = Path(scratch) / f"baseline-state-{n}"
                        shutil.copytree(state / "lake" / "bronze_events", base_state / "lake" / "bronze_events")
                        base_env = {**bench_env(base_state, port), "PYTHONPATH": str(base_tree)}
                    for engine in engines:
                        results[engine][str(n)] = _time_pipeline(engine, n, env)
                        if base_env and base is not None and base_tree is not None:
                            base[engine][str(n)] = _time_pipeline(engine, n, base_env, cwd=base_tree)
                            base[engine][str(n)]["this_commit"] = {
                                k: results[engine][str(n)][k] for k in ("seconds", "steps_s")
                            }
                finally:
                    broker.stop(s)
                    shutil.rmtree(state, ignore_errors=True)
        finally:
            if base_tree:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(base_tree)], cwd=PROJECT_ROOT, capture_output=True
                )
    return results, base


def _baseline_worktree(ref: str, where: Path) -> Path:
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), ref], cwd=PROJECT_ROOT, check=True, capture_output=True
    )
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


def git_state() -> tuple[str, bool]:
    """The commit the tree is at, and whether the tree has uncommitted changes (tracked files only).

    The bench's own outputs do not count: they change as soon as the first section is saved."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    return head.stdout.strip() or "unknown", bool(dirty.stdout.strip())


def meta(quick: bool, repetitions: object = 1) -> dict:
    """Where and when a section is measured: taken when the section *starts* (its commit and start time)."""
    commit, dirty = git_state()
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "git_commit": commit + ("+uncommitted" if dirty else ""),
        "dirty": dirty,
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "repetitions": repetitions,
    }


def batch_table(batch: dict, title: str = "batch pipeline (clean + train + evaluate + publish), one run each") -> Table:
    table = Table(title=title)
    for col in (
        "engine",
        "events",
        "seconds",
        "events/s",
        "peak RSS MB",
        "train s",
        "evaluate s",
        "NDCG@10",
        "popularity",
        "BLAS",
    ):
        table.add_column(col, justify="right")
    for engine, by_size in batch.items():
        for n, r in by_size.items():
            table.add_row(
                engine,
                f"{int(n):,}",
                f"{r['seconds']:.0f}",
                f"{r['events_per_s']:,}",
                f"{r['peak_rss_mb']:,}",
                f"{r['steps_s']['train']:.0f}",
                f"{r['steps_s']['evaluate']:.0f}",
                f"{r['ndcg@10']:.3f}",
                f"{r['popularity_ndcg@10']:.3f}",
                r["blas"],
            )
    return table


def quality_table(q: dict) -> Table:
    k = q["params"]["k"]
    table = Table(title=f"quality on MovieLens-100K, per-user time split, k={k}, mean of seeds {q['params']['seeds']}")
    for col in ("model", "ties", f"P@{k}", f"R@{k}", f"NDCG@{k}", f"MAP@{k}", "AUC", "vs ALS (± paired SE)"):
        table.add_column(col, justify="right")
    for mode in ("ordered", "shuffled"):
        for model, r in q.get(mode, {}).items():
            if not isinstance(r, dict):
                continue
            vs = r.get("vs_reference")
            diff = f"{vs['ndcg_diff']:+.4f} ± {vs['paired_se']:.4f}" if vs else "—"
            table.add_row(
                model,
                mode,
                *(f"{r[key]:.4f}" for key in (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", "auc")),
                diff,
            )
    return table


def freshness_table(f: dict) -> Table:
    k = f.get("split", {}).get("k", 10)
    table = Table(title="freshness: stale vs realtime vs retrain, per recommender")
    for col in ("model", f"stale NDCG@{k}", "realtime", "retrain", "recovered", "vs ALS retrain"):
        table.add_column(col, justify="right")
    for name, r in f.items():
        if isinstance(r, dict) and "stale" in r:
            share, vs = r.get("recovered_share"), r.get("vs_als_retrain")
            table.add_row(
                name,
                *(f"{r[v][f'ndcg@{k}']:.4f}" for v in ("stale", "realtime", "retrain")),
                "n/a" if share is None else f"{share:.0%}",
                "n/a" if vs is None else f"{vs:.0%}",
            )
    return table


def serving_table(sv: dict) -> Table:
    table = Table(title=f"serving GET /recommend, {sv['n_items']:,} items, rank {sv['rank']}, top-{sv['k']}")
    for col in (
        "mode/replicas",
        "max req/s",
        "offered",
        "p50 ms",
        "p99 ms",
        "wrk req/s",
        "wrk p99 ms",
        "errors",
        "RSS MB",
    ):
        table.add_column(col, justify="right")
    for mode, r in sv["modes"].items():
        w = r.get("wrk") or {}
        table.add_row(
            mode,
            f"{r['max_requests_per_s']:,}",
            f"{r['offered_rate']:,}",
            f"{r['p50_ms']}",
            f"{r['p99_ms']}",
            f"{w.get('requests_per_s', 'n/a')}",
            f"{w.get('p99_ms', 'n/a')}",
            f"{r['errors']}",
            f"{r['rss_mb']:,}",
        )
    return table


def speed_table(speed: dict) -> Table:
    table = Table(title=f"speed layer, rank {speed['rank']}, {speed['n_items']:,} items, one process")
    for col in (
        "events/s (backlog drain)",
        "latency p50 ms @1k/s",
        "latency p99 ms @1k/s",
        "solve µs/user",
        "mean history length",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{speed['events_per_s']:,}",
        f"{speed['latency_ms_p50']}",
        f"{speed['latency_ms_p99']}",
        f"{speed['solve_us_per_user']}",
        f"{speed['history_len_mean']}",
    )
    return table


def kafka_table(speed: dict) -> Table:
    ref = speed["kafka_reference"]
    table = Table(title="the same events, the same broker: records/s")
    for col in (
        "speed layer",
        "kafka-python consume",
        "ConsumerPerformance",
        "kafka-python produce",
        "ProducerPerformance",
        "speed / kafka-python",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{speed['events_per_s']:,}",
        f"{ref['kafka_python_consume']['records_per_s']:,}",
        f"{ref['consumer_performance']['records_per_s']:,}",
        f"{ref['kafka_python_produce_per_s']:,}",
        f"{ref['producer_performance']['records_per_s']:,}",
        f"{speed['speed_vs_raw_consume']}",
    )
    return table


def idle_table(idle: dict) -> Table:
    table = Table(title=f"idle CPU, % of one core over {idle['window_s']} s without traffic (target <= 2%)")
    for name in idle["cpu_percent_of_one_core"]:
        table.add_column(name, justify="right")
    table.add_row(*(f"{v}" for v in idle["cpu_percent_of_one_core"].values()))
    return table


def _quality(o: dict) -> dict:
    from bench import quality

    return quality.run(o["quick"], spark=_bench_spark())


def _freshness(o: dict) -> dict:
    from bench import freshness

    return freshness.run(o["quick"])


def _reactivity(o: dict) -> dict:
    from bench import reactivity

    return reactivity.run(o["quick"])


def _neural(o: dict) -> dict:
    from bench import neural

    return neural.run(o["quick"])


def _batch(o: dict) -> dict:
    chosen = [int(x) for x in o["sizes"].split(",") if x] or ([500_000] if o["quick"] else [1_000_000, 10_000_000])
    results, base = run_batch(
        chosen, [e for e in o["engines"].split(",") if e], users=100_000, items=50_000, baseline=o["baseline"]
    )
    return results if base is None else {**results, "baseline": base}


def _storage(o: dict) -> dict:
    from bench import storage

    n = int(o["sizes"].split(",")[0]) if o["sizes"] else (200_000 if o["quick"] else 1_000_000)
    return storage.run(n, o["engines"].split(",")[-1], users=100_000, items=50_000)


def storage_table(r: dict) -> Table:
    from bench import storage

    p = r["params"]
    table = Table(
        title=f"batch pipeline ({p['engine']}) with the lake and models on local disk vs HDFS, "
        f"and a replica's swap-in of the published model (median of {p['swaps']})"
    )
    for col in (
        "storage",
        "events",
        "seconds",
        "clean s",
        "train s",
        "evaluate s",
        "publish s",
        "peak RSS MB",
        "swap-in s",
        "NDCG@10",
    ):
        table.add_column(col, justify="right")
    for row in storage.table_rows(r):
        table.add_row(*row)
    return table


def _speed(o: dict) -> dict:
    from bench import speed

    out = speed.run(o["quick"])
    out["repetitions"] = {"throughput": 1, "latency": 1, "solve": out.get("repetitions")}
    return out


def _idle(o: dict) -> dict:
    from bench import idle

    return idle.run(o["quick"])


def _soak(o: dict) -> dict:
    from bench import soak

    return soak.run(o["quick"])


def _candidates(o: dict) -> dict:
    from bench import candidates

    return candidates.run(o["quick"])


def candidates_table(r: dict) -> Table:
    table = Table(title="hybrid: two-stage serving vs the dense scores it replaces (in process, ms per user)")
    for col in (
        "data",
        "items",
        "same top-10",
        "NDCG@10 dense",
        "NDCG@10 two-stage",
        "dense 1/64",
        "two-stage 1/64",
        "ALS 1/64",
    ):
        table.add_column(col, justify="right")
    for name, v in r.items():
        c = v["cost"]

        def cell(path: str, c: dict = c) -> str:
            if path not in c["batch_1"]:
                return "n/a"
            return f"{c['batch_1'][path]['per_user_ms']:.2f} / {c['batch_64'][path]['per_user_ms']:.2f}"

        ndcg = f"{v['ndcg@10_dense']:.4f}", f"{v['ndcg@10_two_stage']:.4f}"
        table.add_row(
            name,
            str(v["n_items"]),
            f"{v['same_top10_share']:.2%}",
            *ndcg,
            cell("dense"),
            cell("two_stage"),
            cell("als_component"),
        )
    return table


def _serving(o: dict) -> dict:
    from bench import serving

    return serving.run(o["quick"])


def _scale(o: dict) -> dict:
    from bench import scale

    return scale.run(o["quick"])


def _availability(o: dict) -> dict:
    from bench import availability

    return availability.run(o["quick"])


def availability_table(r: dict) -> Table:
    load = r.get("load", {})
    table = Table(title=f"item marked unavailable -> out of every answer, {r['trials']} trials under load")
    for col in (
        "offered req/s",
        "achieved req/s",
        "load p99 ms",
        "gone p50 s",
        "gone p99 s",
        "back p50 s",
        "reappeared",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        str(r["offered_rate"]),
        str(load.get("requests_per_s", "")),
        str(load.get("latency_ms", {}).get("p99", "")),
        str(r["gone_p50_s"]),
        str(r["gone_p99_s"]),
        str(r["back_p50_s"]),
        str(r["reappeared"]),
    )
    return table


def _scale_table(r: dict) -> Table:
    from bench import scale

    return scale.table(r)


def reactivity_table(r: dict) -> Table:
    table = Table(title="reactivity after one view (users >= 100 events) and cold items")
    for col in ("model", "top-10 changed", "unchanged users", "recall@10 cold", "zero-score visitor answers"):
        table.add_column(col, justify="right")
    for name, v in r.items():
        if isinstance(v, dict) and "mean_changed" in v:
            cold = v.get("recall@10_on_cold")
            cold_cell = "n/a" if cold is None else f"{cold:.3f}"
            zero = str(v["visitor_answers_scoring_zero_or_less"])
            table.add_row(name, f"{v['mean_changed']:.2f}", f"{v['share_unchanged']:.0%}", cold_cell, zero)
    return table


def neural_table(r: dict) -> Table:
    k = r["params"]["k"]
    table = Table(title=f"next item (recall@{k} / MRR@{k}), neural training at 1M events, serving at 100k items")
    for col in ("data", "model", f"recall@{k}", f"MRR@{k}", "fit CPU s"):
        table.add_column(col, justify="right")
    for part in ("synthetic_next_item", "ml100k_next_item"):
        for name, v in r.get(part, {}).items():
            if isinstance(v, dict) and f"recall@{k}" in v:
                table.add_row(
                    part, name, f"{v[f'recall@{k}']:.4f}", f"{v[f'mrr@{k}']:.4f}", str(v.get("fit_cpu_s", ""))
                )
    return table


# name on the command line -> (key in latest.json, how to run it, how to show it)
SECTIONS = {
    "quality": ("quality", _quality, lambda r: quality_table(r)),
    "freshness": ("freshness", _freshness, lambda r: freshness_table(r)),
    "reactivity": ("reactivity", _reactivity, lambda r: reactivity_table(r)),
    "neural": ("neural", _neural, lambda r: neural_table(r)),
    "batch": ("batch", _batch, lambda r: batch_table(r)),
    "storage": ("storage", _storage, lambda r: storage_table(r)),
    "speed": ("speed_layer", _speed, lambda r: [speed_table(r), kafka_table(r)]),
    "idle": ("idle", _idle, lambda r: idle_table(r)),
    "soak": ("soak", _soak, lambda r: f"soak: {r}"),
    "serving": ("serving", _serving, lambda r: serving_table(r)),
    "candidates": ("candidates", _candidates, lambda r: candidates_table(r)),
    "scale": ("scale", _scale, lambda r: _scale_table(r)),
    "availability": ("availability", _availability, lambda r: availability_table(r)),
}
DEFAULT_SECTIONS = "quality,freshness,reactivity,neural,batch,storage,speed,idle,serving,candidates,scale,availability"


@app.command()
def main(
    quick: bool = typer.Option(False, help="Reduced sizes (minutes, not tens of minutes)."),
    only: str = typer.Option(DEFAULT_SECTIONS, help="Comma-separated sections to run."),
    allow_dirty: bool = typer.Option(False, help="Run on a tree with uncommitted changes (results say so)."),
    sizes: str = typer.Option("", help="Comma-separated event counts for the batch section."),
    engines: str = typer.Option("spark_als,implicit_als", help="Comma-separated recommenders for the batch section."),
    baseline: str = typer.Option(
        "",
        help="Also run the batch pipeline of this git ref (a scratch worktree), "
        "side by side on the same data: e.g. the staging-commit path before native Delta.",
    ),
) -> None:
    """Run the benchmarks and write bench/results/latest.json and report.md."""
    sections = [s for s in only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise typer.BadParameter(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if git_state()[1] and not allow_dirty:
        raise typer.BadParameter(
            "the tree has uncommitted changes: commit first (results record the commit they "
            "ran on), or pass --allow-dirty and the results say +uncommitted"
        )
    options = {"quick": quick, "sizes": sizes, "engines": engines, "baseline": baseline}
    results: dict = {}
    sections_meta: dict = {}
    latest = RESULTS / "latest.json"
    for name in sections:
        key, run, show = SECTIONS[name]
        started = meta(quick)  # before the section: its commit and start time, not the run's end
        results[key] = run(options)
        started["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        started["repetitions"] = results[key].pop("repetitions", 1) if isinstance(results[key], dict) else 1
        sections_meta[key] = started
        if key == "batch" and "baseline" in results[key]:  # measured in this run, but the code is the baseline's
            results["batch_baseline"] = results[key].pop("baseline")
            sections_meta["batch_baseline"] = {**started, "git_commit": results["batch_baseline"]["commit"]}
        shown = show(results[key])
        for table in shown if isinstance(shown, list) else [shown]:
            console.print(table)
        # Saved after every section: a section that crashes later does not take the finished ones with it.
        latest = save(results, sections_meta, quick)
    report = bench_report.write(json.loads(latest.read_text()), RESULTS)
    pictures = write_plots(json.loads(latest.read_text()), RESULTS)
    console.print(f"wrote {latest}, {report}, {', '.join(p.name for p in pictures)}")


def save(results: dict, sections_meta: dict, quick: bool) -> Path:
    """Merge these sections into latest.json; sections not run this time keep their last results (and meta)."""
    latest = RESULTS / "latest.json"
    merged = json.loads(latest.read_text()) if latest.exists() else {}
    previous = merged.get("meta", {}).get("sections", {})
    merged.update(results)
    merged["meta"] = {**meta(quick), "sections": {**previous, **sections_meta}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(merged, indent=2))
    return latest


if __name__ == "__main__":
    app()
