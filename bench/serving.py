"""Serving benchmark: GET /recommend through the real HTTP process, load from a separate process, one run.

One ALS model (100,000 items, rank 64, fitted by the implicit engine on synthetic events),
served several ways side by side, each in fresh server processes:

- `exact`: the default; the norm-bounded exact scan (`recsys.models.norm_index`) behind
  `Recommender.recommend_many`, the raw ASGI route (`serving/fast.py`); one process and two
  replicas (separate processes on their own ports, connections spread evenly, as a balancer would);
- `exact/1/no_fast_path`: the same with `RECSYS_SERVING_FAST_PATH=false`: every request through FastAPI's
  route, which measures what the raw ASGI route saves;
- `full_sort`: the naive baseline, every score computed (BLAS) and sorted per request;

and per mode: the most requests/s sustained (closed loop, 8 connections) and latency at a fixed
offered rate (open loop, 1,000/s or half the mode's maximum if lower, from when each request was
*due*) by the project's load generator (`bench/loadgen.py`), then `wrk` (Debian's, if installed;
closed loop, `bench/wrk_recommend.lua` spreads users) as an independent generator.

In the same run: the physical limit (bytes the scan reads per request ÷ memory bandwidth measured
here by a numpy copy), the exactness of the answers (the same top-k as the fp32 full sort, and as the
BLAS full sort, on 500 users), and the hybrid recommender at 100,000 items next to ALS at the same
offered rate (issue 15's target: hybrid p99 ≤ 2× ALS's), and bulk lookups (`batch_vs_single`): 1,000
users in one `POST /recommend/batch` against the same 1,000 users as single calls at the single calls'
best throughput (issue 27's target: ≥ 10× the users per second, the same answers). The machine has 2 cores
shared with the load generator (and, on this workplace, with other jobs): compare within the run.

    python -m bench.serving --baseline /path/to/main-worktree --rounds 4   # only batch_vs_single, A/B

runs only `batch_vs_single` (`batch_only`), its servers from this checkout and, alternating, from the baseline's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import psutil
import typer

from bench.speed import build_model
from infra import processes
from recsys.data import catalog
from recsys.io import model_store
from recsys.models.als import ImplicitALS
from recsys.models.norm_index import canonical_all
from recsys.settings import PROJECT_ROOT, Settings
from recsys.topk import PAD, full_sort_top_k
from serving.model import ServingModel

# (index, replicas, fast path): the default (exact, one process and two), the default without the fast path
# (every request through FastAPI's route: what `serving/fast.py` saves), then the naive full sort.
MODES = (("exact", 1, True), ("exact", 2, True), ("exact", 1, False), ("full_sort", 1, True))
WRK_SCRIPT = PROJECT_ROOT / "bench" / "wrk_recommend.lua"


def _loadgen(url: str, paths: Path, connections: int, seconds: float, rate: float = 0) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--paths-file",
        str(paths),
        "--connections",
        str(connections),
        "--seconds",
        str(seconds),
        "--rate",
        str(rate),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wrk(urls: list[str], paths: Path, connections: int, seconds: float) -> dict | None:
    """wrk, closed loop, one process per replica (connections split evenly); None if wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    per = max(1, connections // len(urls))
    env = {**os.environ, "PATHS": str(paths)}
    command = ["wrk", "-t1", f"-c{per}", f"-d{seconds}s", "--latency", "-s", str(WRK_SCRIPT)]
    runs = [
        subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for url in urls
    ]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in runs]
    requests = sum(o["requests"] for o in outs)
    seconds_run = max(o["seconds"] for o in outs)
    return {
        "requests": requests,
        "errors": sum(o["errors"] for o in outs),
        "connections": per * len(urls),
        "requests_per_s": round(requests / seconds_run, 1),
        # percentiles of the busiest replica's run (wrk reports per process)
        "p50_ms": max(o["p50_ms"] for o in outs),
        "p99_ms": max(o["p99_ms"] for o in outs),
    }


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


def _paths(s: Settings, users: list[str], k: int, name: str = "paths.txt") -> Path:
    path = s.state_dir / name
    path.write_text("".join(f"/recommend/{u}?k={k}\n" for u in users))
    return path


def _serve(configs: list[Settings], s: Settings, label: str, root: Path | None = None):
    procs = [
        processes.start("serving", c, log=s.state_dir / f"serving-{label}-{i}.log", root=root)
        for i, c in enumerate(configs)
    ]
    try:
        for c, proc in zip(configs, procs, strict=True):
            processes.wait_ready(c, proc, timeout_s=600)
    except Exception:
        for proc in procs:
            processes.stop(proc)
        raise
    return procs


def measure_mode(
    s: Settings, mode: str, replicas: int, paths: Path, seconds: float, rate: float, fast_path: bool = True
) -> dict:
    """`replicas` serving processes on their own ports, connections spread evenly over them."""
    configs = [
        s.model_copy(update={"serving_index": mode, "serving_port": s.serving_port + i, "serving_fast_path": fast_path})
        for i in range(replicas)
    ]
    started = time.monotonic()
    procs = _serve(configs, s, mode if fast_path else f"{mode}-no-fast-path")
    try:
        ready_s = time.monotonic() - started
        urls = [processes.serving_url(c) for c in configs]
        closed = _loadgen(",".join(urls), paths, connections=8, seconds=seconds)
        # Latency at the target rate, or at half of what this mode sustains if that is less (near capacity
        # the queue grows for the whole run and the percentiles only measure the run's length).
        offered = min(rate, round(0.5 * closed["requests_per_s"]))
        open_loop = _loadgen(",".join(urls), paths, connections=32, seconds=seconds, rate=offered)
        wrk = _wrk(urls, paths, connections=8, seconds=seconds)
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
        "errors": closed["errors"] + open_loop["errors"] + (wrk["errors"] if wrk else 0),
        "wrk": wrk,
        "rss_mb": round(rss / 2**20),
        "start_to_ready_s": round(ready_s, 1),
    }


def memory_bandwidth(item_bytes: int) -> dict:
    """GB/s of a numpy copy (read + write counted), on a 256 MB array (DRAM) and on one as large as the item
    matrix (what a full scan reads), best of 5 each, one thread: the machine's memory speed, measured here."""
    out = {}
    for name, size in (("dram_256mb", 256 * 2**20), ("item_matrix", item_bytes)):
        src = np.ones(size // 4, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        best = min(_timed(np.copyto, dst, src) for _ in range(5))
        out[f"{name}_gb_s"] = round(2 * src.nbytes / best / 1e9, 2)
    return out


def _timed(f, *args) -> float:
    started = time.perf_counter()
    f(*args)
    return time.perf_counter() - started


def exactness_and_bytes(s: Settings, users: list[str], k: int = 10) -> dict:
    """In process, on the served model: the exact path's answers against the fp32 full sort (the canonical
    float32 score of every item, sorted) and against the BLAS full sort; and the bytes its scan read."""
    published = model_store.latest_published(s)
    assert published is not None  # build_model published one
    artifact = model_store.load_from(published, s)
    exact = ServingModel(artifact, {}, s.model_copy(update={"serving_index": "exact"}))
    blas = ServingModel(artifact, {}, s.model_copy(update={"serving_index": "full_sort"}))
    model = cast(ImplicitALS, exact.model)  # build_model's
    index = model.norm_index
    items = np.asarray(model.item_factors, np.float32)
    same_fp32 = same_blas = 0
    blocks = []
    for user in users:
        query = exact.prepare(user, k)
        ranked = exact.answer([query])[0]
        blocks.append(index.last_blocks_read)
        scores = canonical_all(model.user_vectors(query.contexts)[0], items)
        scores[query.excluded] = -np.inf
        idx, _ = full_sort_top_k(scores, k)
        same_fp32 += ranked.item_ids == [exact.item_ids[j] for j in idx if j != PAD]
        same_blas += ranked.item_ids == blas.answer([blas.prepare(user, k)])[0].item_ids
    block_bytes = index.block * index.rank * 4
    return {
        "users": len(users),
        "same_as_fp32_full_sort": same_fp32,
        "same_as_blas_full_sort": same_blas,
        "blocks_per_request": round(float(np.mean(blocks)), 2),
        "block_bytes": block_bytes,
        "bytes_per_request": round(float(np.mean(blocks)) * block_bytes),
        "full_scan_bytes": int(items.nbytes),
        "blocks": len(index.starts),
    }


def hybrid_data_and_params(s: Settings, n_users: int, n_items: int, history_events: int):
    """Synthetic events at this size as a Dataset (a synthetic catalogue written for content), and the hybrid's
    parameters there: the study's parts (SLIT, ALS, EASE, transitions, session-KNN, content, the logistic
    re-ranker); only what makes the *fit* long at this size is cut (EASE/SLIT on the 3,000 most popular items,
    a small tuning sample). Shared by `build_hybrid` and the candidates section (`bench/candidates.py`)."""
    import pyarrow as pa

    from recsys.data import datasets
    from recsys.data.synthetic import SyntheticConfig, iter_batches
    from recsys.models.hybrid import HybridParams

    config = SyntheticConfig(n_events=history_events, n_users=n_users, n_items=n_items, seed=100, zipf_exponent=0.5)
    table = pa.Table.from_batches(list(iter_batches(config)))
    weights = table.column("event_type").to_pandas().map(s.event_weights).to_numpy()
    ts = table.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    catalog.write(catalog.synthetic(n_items, 20), s)  # content ranks by these attributes
    data, _ = datasets.build(
        table.column("user_id"),
        table.column("item_id"),
        ts,
        table.column("event_type"),
        weights,
        list(s.event_weights),
        session=table.column("session_id"),
        items=catalog.attributes(s),
    )
    params = HybridParams(
        component_params={
            "ease": {"max_items": 3000},
            "slit": {"max_items": 3000, "max_rows": 200_000},
            "implicit_als": {"rank": 64, "iterations": 2, "reg": 20.0, "alpha": 1.0},
        },
        tune_users=200,
        tune_rounds=1,
        rerank="always",
    )
    return data, params


def build_hybrid(s: Settings, n_users: int, n_items: int, history_events: int) -> dict:
    """A hybrid over the same kind of data at 100,000 items (`hybrid_data_and_params`), published in its own
    state folder."""
    from recsys.models.hybrid import Hybrid

    data, params = hybrid_data_and_params(s, n_users, n_items, history_events)
    started = time.monotonic()
    model = Hybrid(params, settings=s)
    model.fit(data)
    fit_s = time.monotonic() - started
    manifest = model_store.build_manifest(model, data, "m20260101T000000000000-hybrid", kafka_offsets={})
    artifact = model_store.ModelArtifact(manifest, data, model)
    model_store.promote(model_store.save_candidate(artifact, s), s)
    return {
        "fit_s": round(fit_s, 1),
        "components": sorted(model.components),
        "weights": model.weights,
        "reranker": model.reranker is not None,
        "n_items": data.n_items,
    }


def hybrid_vs_als(
    als: Settings, hybrid: Settings, als_paths: Path, hybrid_paths: Path, seconds: float, rate: float
) -> dict:
    """One replica of each at the same offered rate (open loop), one after the other in this run."""
    out: dict[str, Any] = {}
    for name, s, paths in (("als", als, als_paths), ("hybrid", hybrid, hybrid_paths)):
        config = s.model_copy(update={"serving_index": "exact"})
        procs = _serve([config], s, f"{name}-latency")
        try:
            url = processes.serving_url(config)
            _loadgen(url, paths, connections=4, seconds=min(seconds, 5), rate=rate)  # warm the caches
            out[name] = _loadgen(url, paths, connections=16, seconds=seconds, rate=rate)
        finally:
            processes.stop(procs[0])
    out["offered_rate"] = rate
    out["p99_ratio"] = round(out["hybrid"]["latency_ms"]["p99"] / out["als"]["latency_ms"]["p99"], 2)
    return out


def _post_json(url: str, body: dict, token: str) -> tuple[float, dict]:
    """(seconds, parsed answer) of one JSON POST with the bearer token."""
    import urllib.request

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as r:
        payload = r.read()
    return time.perf_counter() - started, json.loads(payload)


def batch_vs_single(s: Settings, users: list[str], seconds: float, repeats: int = 5, root: Path | None = None) -> dict:
    """One replica (exact): the same users as single GETs (closed loop, 8 connections: their best throughput)
    and as one `POST /recommend/batch` (best of `repeats`, one after another); users per second of each, and
    whether every batch answer equals the single call's (each user's GET, one at a time, compared after).
    `root`: serve the code of that checkout (`batch_only`'s baseline)."""
    import urllib.request

    config = s.model_copy(update={"serving_index": "exact"})
    paths = _paths(s, users, k=10, name="batch-paths.txt")
    procs = _serve([config], s, "batch", root)
    try:
        url = processes.serving_url(config)
        _loadgen(url, paths, connections=4, seconds=min(seconds, 5))  # warm the caches
        single = _loadgen(url, paths, connections=8, seconds=seconds)
        body, token = {"user_ids": users, "k": 10}, s.write_token()
        timings = []
        for _ in range(repeats):
            elapsed, answer = _post_json(f"{url}/recommend/batch", body, token)
            timings.append(elapsed)
        singles = []
        for user in users:
            with urllib.request.urlopen(f"{url}/recommend/{user}?k=10", timeout=30) as r:
                singles.append(json.loads(r.read()))
    finally:
        processes.stop(procs[0])
    best = min(timings)
    batch_users_per_s = len(users) / best
    return {
        "users": len(users),
        "single_requests_per_s": single["requests_per_s"],
        "single_p50_ms": single["latency_ms"]["p50"],
        "single_errors": single["errors"],
        "batch_s": [round(x, 4) for x in timings],
        "batch_us_per_user_median": round(float(np.median(timings)) / len(users) * 1e6, 1),
        "batch_users_per_s": round(batch_users_per_s, 1),
        "ratio": round(batch_users_per_s / single["requests_per_s"], 1),
        "same_answers": sum(_list_of(a) == _list_of(b) for a, b in zip(answer["results"], singles, strict=True)),
        "sources": sorted({a["source"] for a in answer["results"]}),
    }


def _list_of(answer: dict) -> dict:
    """An answer without its `request_id`: every answer gets its own (its impression's), the list is the rest."""
    return {k: v for k, v in answer.items() if k != "request_id"}


def _section_settings(tmp: Path) -> Settings:
    """The section's own state folder (created), broker port, two serving ports and pseudonym key."""
    from infra import broker

    s = Settings(
        state_dir=tmp / "als",
        kafka_bootstrap=f"127.0.0.1:{broker.free_port()}",
        serving_port=_two_free_ports(),
        pseudonym_key="bench-only-key-" + "0" * 32,
    )
    s.state_dir.mkdir(parents=True)
    return s


def batch_only(baseline: Path | None = None, rounds: int = 3, quick: bool = False) -> dict:
    """Only `batch_vs_single`, on the section's model (full size unless `quick`), `rounds` times; with a
    `baseline` checkout (e.g. a worktree of main), its server and this one's alternate on the same model and
    broker, so a change is measured side by side in one run. Medians over the rounds per code."""
    from infra import broker

    n_users, n_items, rank = (20_000, 100_000, 64)
    seconds = 5 if quick else 15
    trees: dict[str, Path | None] = {"this": None} if baseline is None else {"baseline": baseline, "this": None}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="recsys-bench-batch-") as tmp:
        s = _section_settings(Path(tmp))
        broker.start(s)
        try:
            artifact = build_model(
                s, n_users, n_items, rank, history_events=1_000_000 if quick else 3_000_000, zipf_exponent=0.5
            )
            catalog.write(catalog.synthetic(n_items, 20), s)
            users = np.random.default_rng(7).choice(artifact.user_ids, size=2_000, replace=False).tolist()[:1_000]
            for _ in range(rounds):
                for name, root in trees.items():
                    runs[name].append(batch_vs_single(s, users, seconds, root=root))
        finally:
            broker.stop(s)
    keys = ("single_requests_per_s", "batch_us_per_user_median", "batch_users_per_s", "ratio")
    medians = {name: {k: float(np.median([r[k] for r in rs])) for k in keys} for name, rs in runs.items()}
    return {"rounds": rounds, "quick": quick, "medians": medians, "runs": runs}


def run(quick: bool) -> dict:
    from infra import broker

    n_users, n_items, rank = (20_000, 100_000, 64)
    seconds, rate = (5, 1_000) if quick else (15, 1_000)
    with tempfile.TemporaryDirectory(prefix="recsys-bench-serving-") as tmp:
        s = _section_settings(Path(tmp))
        broker.start(s)
        try:
            # A flatter popularity than the default so that (nearly) every one of the 100k items is in the model.
            events = 1_000_000 if quick else 3_000_000
            artifact = build_model(s, n_users, n_items, rank, history_events=events, zipf_exponent=0.5)
            catalog.write(catalog.synthetic(n_items, 20), s)
            rng = np.random.default_rng(7)
            users = rng.choice(artifact.user_ids, size=2_000, replace=False).tolist()
            paths = _paths(s, users, k=10)
            result: dict = {
                "rank": rank,
                "n_items": len(artifact.item_ids),
                "n_users": len(artifact.user_ids),
                "k": 10,
                "offered_rate": rate,
                "seconds_per_run": seconds,
                "modes": {},
                "wrk": shutil.which("wrk") is not None,
            }
            result["exactness"] = exactness_and_bytes(s, users[: 200 if quick else 500])
            result["bandwidth"] = memory_bandwidth(result["exactness"]["full_scan_bytes"])
            for mode, replicas, fast in MODES:
                name = f"{mode}/{replicas}" + ("" if fast else "/no_fast_path")
                result["modes"][name] = measure_mode(s, mode, replicas, paths, seconds, rate, fast)
            result["batch_vs_single"] = batch_vs_single(s, users[:1_000], seconds)
            # The hybrid at the same size, in its own state folder (its own model) on the same broker.
            hs = s.model_copy(update={"state_dir": Path(tmp) / "hybrid", "serving_port": s.serving_port + 2})
            hs.state_dir.mkdir(parents=True)
            result["hybrid_model"] = build_hybrid(hs, n_users, n_items, events)
            hybrid_published = model_store.latest_published(hs)
            assert hybrid_published is not None  # build_hybrid published one
            hybrid_artifact = model_store.load_from(hybrid_published, hs)
            hybrid_users = rng.choice(hybrid_artifact.user_ids, size=2_000, replace=False).tolist()
            result["hybrid_vs_als"] = hybrid_vs_als(
                s, hs, paths, _paths(hs, hybrid_users, k=10), seconds, rate=20 if quick else 50
            )
        finally:
            broker.stop(s)
    return summarise(result)


def summarise(result: dict) -> dict:
    """Headline figures and ratios (to the naive full sort, to the physical limit) from a run's measurements."""
    modes = result["modes"]
    headline = modes.get("exact/1") or next(iter(modes.values()))
    result.update(
        {
            "config": "exact/1",
            "rps": headline["max_requests_per_s"],
            "p50_ms": headline["p50_ms"],
            "p99_ms": headline["p99_ms"],
        }
    )
    naive = modes.get("full_sort/1")
    if naive:
        result["speedup_vs_full_sort"] = {
            m: round(r["max_requests_per_s"] / naive["max_requests_per_s"], 1)
            for m, r in modes.items()
            if m != "full_sort/1"
        }
    ex, bw = result.get("exactness"), result.get("bandwidth")
    if ex and bw:
        gb_s = bw["item_matrix_gb_s"]  # bytes moved per second (a copy's reads + writes)
        limits = {"exact_scan": gb_s * 1e9 / ex["bytes_per_request"], "full_scan": gb_s * 1e9 / ex["full_scan_bytes"]}
        result["physical_limit_rps"] = {k: round(v) for k, v in limits.items()}
        result["share_of_physical_limit"] = {
            m: round(r["max_requests_per_s"] / limits["full_scan" if m.startswith("full_sort") else "exact_scan"], 4)
            for m, r in modes.items()
        }
    targets = {
        m: r["max_requests_per_s"] >= 1000 and r["at_rate"]["offered_rate"] == 1000 and r["p99_ms"] <= 10
        for m, r in modes.items()
        if m.startswith("exact") and not m.endswith("no_fast_path")  # the comparison, not a configuration to ship
    }
    route = modes.get("exact/1/no_fast_path")
    if route and "exact/1" in modes:
        result["fast_path_speedup"] = {
            "requests_per_s": round(modes["exact/1"]["max_requests_per_s"] / route["max_requests_per_s"], 2),
            "p99_at_rate": round(route["p99_ms"] / modes["exact/1"]["p99_ms"], 2),
            "same_offered_rate": route["offered_rate"] == modes["exact/1"]["offered_rate"],
        }
    result["target_met"] = targets
    hv = result.get("hybrid_vs_als")
    if hv:
        result["hybrid_target_met"] = hv["p99_ratio"] <= 2.0
    bulk = result.get("batch_vs_single")
    if bulk:
        result["batch_target_met"] = bulk["ratio"] >= 10 and bulk["same_answers"] == bulk["users"]
    return result


def main(
    baseline: Annotated[
        Path | None, typer.Option(help="A checkout to measure next to this one (a main worktree).")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Alternations of the two servers (medians over them).")] = 3,
    quick: Annotated[bool, typer.Option(help="The quick size (1M events) instead of the full one (3M).")] = False,
) -> None:
    """`python -m bench.serving`: only the batch-vs-single comparison (the whole section is `bench.run --only
    serving`), printed as JSON."""
    print(json.dumps(batch_only(baseline, rounds, quick), indent=1))


if __name__ == "__main__":
    typer.run(main)
