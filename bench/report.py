"""The Markdown report of `make bench`, rendered from `bench/results/latest.json` alone.

The same text goes to `bench/results/report.md` and, between the README's
`<!-- results -->` markers, to the README's Results section, so the README never
quotes a number the results file does not hold (a unit test checks they agree).
"""

from __future__ import annotations

from pathlib import Path

from recsys.settings import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
START, END = "<!-- results", "<!-- /results -->"


def render(results: dict) -> str:
    m = results["meta"]
    commits = sorted({s.get("git_commit", "?") for n, s in m.get("sections", {}).items() if n in results})
    provenance = (f"Every section below was measured at commit {commits[0]}." if len(commits) == 1 else
                  f"Sections come from {len(commits)} commits ({', '.join(commits)}): each says its own.")  # fmt: skip
    lines = [
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}. {provenance} Each section "
        "says the commit and the time it started at; every cell is one run unless it says otherwise. Times on a "
        "shared machine are noisy: compare within a section. Targets missed are marked **MISSED**. Reproduce "
        "everything with `make bench` (`make bench-quick`: reduced sizes); one section with "
        "`.venv/bin/python -m bench.run --only <section>`. Plots (matplotlib): `bench/results/<section>.png`; all "
        "figures: `bench/results/latest.json`.",
    ]
    for name, section in (("quality", _quality), ("freshness", _freshness), ("reactivity", _reactivity),
                          ("neural", _neural), ("batch", _batch), ("speed_layer", _speed), ("serving", _serving),
                          ("soak", _soak)):  # fmt: skip
        if name in results:
            lines += ["", *section(results[name]), "", _measured(results, name)]
    return "\n".join(lines) + "\n"


def _measured(results: dict, name: str) -> str:
    meta = results["meta"].get("sections", {}).get(name, results["meta"])
    quick = " (quick sizes)" if meta.get("quick") else ""
    cli = {"speed_layer": "speed"}.get(name, name)
    dirty = " (with uncommitted changes)" if meta.get("dirty") or "+uncommitted" in meta["git_commit"] else ""
    return (f"_Measured at commit {meta['git_commit']}{dirty}, started {meta['started_at']}{quick}: "
            f"`python -m bench.run --only {cli}`._")  # fmt: skip


def _soak(k: dict) -> list[str]:
    return [
        "### Soak: crashes and broker restarts under a stream (`make bench-soak`)", "",
        f"{k['events']:,} events (2% malformed) streamed while the archiver and the speed layer were killed with "
        f"SIGKILL {k['kills']} times at random moments and the broker restarted {k['broker_restarts']} times; "
        f"{k['processes_died_on_their_own']} processes died on their own. Afterwards: {k['bronze_rows']:,} rows in "
        f"bronze + {k['dlq_rows']:,} in the DLQ: {k['lost_events']} events and {k['lost_dead_letters']} dead letters "
        f"lost, {k['duplicated']} duplicated; "
        f"{k['users_checked']:,} users' vectors equal an uninterrupted run's. Sends retried after the broker did not "
        f"acknowledge them: {k.get('send_retries_logged', 'n/a')} times. Streaming took "
        f"{k['streaming_seconds']} s; the final catch-up after the last kill {k['final_catch_up_seconds']} s.",
    ]  # fmt: skip


def _quality(q: dict) -> list[str]:
    params = q["params"]
    k, seeds, reference = params["k"], params["seeds"], params["reference"]
    lines = [f"### Quality on MovieLens-100K (per-user time split, last 20% of each user's events held out, k={k})", "",
             f"Mean of {len(seeds)} seed(s) {seeds}. `±` is the paired standard error of the per-user NDCG@{k} "
             f"difference to {reference} (per-user NDCG averaged over the seeds first). Hyper-parameters: each "
             "model's defaults (see the model's file for where they come from)."]  # fmt: skip
    for mode in ("ordered", "shuffled"):
        if mode not in q:
            continue
        title = "ties ordered as the split orders them (by item id)" if mode == "ordered" else "ties shuffled"
        lines += ["", f"**{title}** ({q[mode].get('users', 0)} users)", "",
                  f"| model | P@{k} | R@{k} | F1@{k} | NDCG@{k} | MAP@{k} | AUC | coverage | NDCG vs {reference} |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        rows = [(name, r) for name, r in q[mode].items() if isinstance(r, dict)]
        for name, r in sorted(rows, key=lambda nr: -nr[1].get(f"ndcg@{k}", 0)):
            vs = r.get("vs_reference")
            diff = f"{vs['ndcg_diff']:+.4f} ± {vs['paired_se']:.4f}" if vs else "—"
            lines.append(f"| {name} | {r[f'precision@{k}']:.4f} | {r[f'recall@{k}']:.4f} | {r[f'f1@{k}']:.4f} | "
                         f"{r[f'ndcg@{k}']:.4f} | {r[f'map@{k}']:.4f} | {_f(r.get('auc'))} | "
                         f"{_f(r.get(f'coverage@{k}'))} | {diff} |")  # fmt: skip
    lines += _quality_targets(q, k)
    return lines


def _quality_targets(q: dict, k: int) -> list[str]:
    ordered = q.get("ordered", {})
    pop = ordered.get("popularity", {}).get(f"ndcg@{k}")
    best = max(((n, r) for n, r in ordered.items() if isinstance(r, dict) and n != "popularity"),
               key=lambda nr: nr[1].get(f"ndcg@{k}", 0), default=None)  # fmt: skip
    if not pop or best is None:
        return []
    name, r = best
    value = r[f"ndcg@{k}"]
    ok = value >= 0.30 and value >= 2.5 * pop
    vs = r.get("vs_reference")
    beats = vs is not None and vs["ndcg_diff"] > 2 * vs["paired_se"]
    mark = "met" if ok and beats else "**MISSED**"
    margin = f", {vs['ndcg_diff'] / vs['paired_se']:.1f} paired SE over ALS" if vs else ""
    return ["", f"Target NDCG@{k} ≥ 0.30 and ≥ 2.5x popularity, beating ALS by > 2 paired SE: best is {name} with "
                f"{value:.4f} ({value / pop:.2f}x popularity{margin}): {mark}."]  # fmt: skip


def _freshness(f: dict) -> list[str]:
    split = f.get("split", {})
    k = split.get("k", 10)
    lines = ["### Freshness: what the real-time path earns, per recommender", "",
             "Each user's held-out slice is split in time: the first half is streamed, the rest is scored. Stale = "
             "the batch model and the user as they were; realtime = the same model, the user's history and latest "
             "events with the streamed ones (stateful models updated as the speed layer does, ALS by exact fold-in); "
             "retrain = the same recommender fitted again on history + streamed. Recovered = (realtime − stale) / "
             "(retrain − stale); vs ALS retrain = the same gain over ALS's retrain gain. Computed in one process with "
             "the speed layer's code (the `speed` section measures the running speed layer).", "",
             f"| model | stale NDCG@{k} | realtime | retrain | recovered (target ≥ 100%) | vs ALS retrain |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in f.items():
        if not isinstance(r, dict) or "stale" not in r:
            continue
        share, vs = r.get("recovered_share"), r.get("vs_als_retrain")
        mark = "" if share is None or share >= 1.0 else " (missed)"
        lines.append(f"| {name} | {r['stale'][f'ndcg@{k}']:.4f} | {r['realtime'][f'ndcg@{k}']:.4f} | "
                     f"{r['retrain'][f'ndcg@{k}']:.4f} | {_pct(share)}{mark} | {_pct(vs)} |")  # fmt: skip
    return lines


def _reactivity(r: dict) -> list[str]:
    lines = ["### Reactivity after one click, and cold items (MovieLens-100K, per-user time split)", "",
             f"Users with ≥ {r['params']['min_events']} train events get one new view (a seeded pick among the 50 "
             "most popular items they have not seen) through the real-time path; `changed` is how many of their "
             "top-10 items change (the viewed item is excluded before and after). Cold items: catalogue items with "
             "no train event; recall@10 on held-out events on them, and for a new visitor whose first click is a "
             "cold item, answers scoring ≤ 0 (serving answers those from popular items instead).", "",
             "| model | top-10 changed (target ≥ 3) | users seeing no change | recall@10 on cold items | "
             "zero-score visitor answers |", "|---|---|---|---|---|"]  # fmt: skip
    for name, v in r.items():
        if isinstance(v, dict) and "mean_changed" in v:
            cold = v.get("recall@10_on_cold")
            mark = "" if v["mean_changed"] >= 3 else " (missed)"
            lines.append(f"| {name} | {v['mean_changed']:.2f}{mark} | {v['share_unchanged']:.0%} | "
                         f"{'n/a' if cold is None else f'{cold:.3f}'} | {v['visitor_answers_scoring_zero_or_less']} "
                         f"of {v['visitor_answers']} |")  # fmt: skip
    return lines


def _neural(n: dict) -> list[str]:
    k = n["params"]["k"]
    lines = ["### Neural recommenders: next item, training time, serving latency (`bench/neural.py`)", "",
             f"Next-item recall@{k} and MRR@{k} (ties count against the target) on the same events for every model. "
             "Synthetic: the generator's sessions (views), the last 10% of sessions by start time are test, every "
             "prefix predicts its next item among all items but the current last one. MovieLens-100K: every "
             "held-out event of the time split predicted from the user's events before it, among the items they "
             "had not rated; ALS folds the user in on that history.", "",
             f"| data | model | recall@{k} | MRR@{k} | fit CPU s |", "|---|---|---|---|---|"]  # fmt: skip
    for part, label in (("synthetic_next_item", "synthetic"), ("ml100k_next_item", "MovieLens-100K")):
        rows = [(name, r) for name, r in n.get(part, {}).items() if isinstance(r, dict) and f"recall@{k}" in r]
        for name, r in sorted(rows, key=lambda nr: -nr[1][f"recall@{k}"]):
            cpu = r.get("fit_cpu_s")
            lines.append(f"| {label} | {name} | {r[f'recall@{k}']:.4f} | {r[f'mrr@{k}']:.4f} | "
                         f"{'—' if cpu is None else f'{cpu:.0f}'} |")  # fmt: skip
    t = n.get("training_1m", {})
    if t:
        lines += ["", f"Training on {t['events']:,} synthetic events ({t['users']:,} users × {t['items']:,} items), "
                      "target ≤ 600 s each:", "", "| model | wall s | CPU s | epochs | stopped by the time budget |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name in ("neumf", "srgnn"):
            r = t[name]
            mark = "" if r["fit_wall_s"] <= 600 else " **MISSED**"
            lines.append(f"| {name} | {r['fit_wall_s']}{mark} | {r['fit_cpu_s']} | {r.get('epochs')} | "
                         f"{r.get('stopped_by_time_budget')} (budget {r['time_budget_s']:.0f} s) |")  # fmt: skip
    sv = n.get("serving_100k", {})
    if sv:
        r = sv["srgnn_recommend"]
        mark = "met" if r["cpu_ms_p99"] <= 20 else "**MISSED**"
        lines += ["", f"Serving one SR-GNN answer (`ServingModel.recommend`, top-{sv['k']}) at {sv['items']:,} items: "
                      f"CPU p50 {r['cpu_ms_p50']} ms, p99 {r['cpu_ms_p99']} ms (target p99 ≤ 20 ms: {mark}); wall "
                      f"p50 {r['wall_ms_p50']} ms, p99 {r['wall_ms_p99']} ms on the shared machine ({r['n']} "
                      "requests)."]
        for mode, v in sv.get("neumf_score", {}).items():
            lines.append(f"NeuMF scoring at {sv['items']:,} items, {mode}: CPU p50 {v['cpu_ms_p50']} ms, p99 "
                         f"{v['cpu_ms_p99']} ms.")  # fmt: skip
    for key, label in (("neumf_exactness_ml100k", "MovieLens-100K"), ("neumf_exactness_synthetic", "synthetic")):
        e = n.get(key)
        if e:
            lines.append(f"NeuMF served ranking vs exhaustive ({label}, {e['items']:,} items, {e['candidates']} "
                         f"candidates): mean top-10 overlap {e['top10_overlap_mean']:.3f}, identical for "
                         f"{e['top10_identical_share']:.0%} of {e['users']} users.")  # fmt: skip
    u = n.get("neumf_update_ml100k")
    if u:
        lines.append(f"NeuMF real-time update of one user (history + one click): CPU p50 {u['cpu_ms_p50']} ms, p99 "
                     f"{u['cpu_ms_p99']} ms.")  # fmt: skip
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _batch(batch: dict) -> list[str]:
    lines = ["### Batch pipeline (clean + train + evaluate + publish; synthetic, 100k users x 50k items, backfilled)",
             "",
             "| engine | events | seconds | events/s | peak RSS (MB) | train (s) | evaluate (s) | NDCG@10 | "
             "popularity NDCG@10 | BLAS |", "|---" * 10 + "|"]  # fmt: skip
    for engine, by_size in batch.items():
        for n, r in by_size.items():
            lines.append(f"| {engine} | {int(n):,} | {r['seconds']} | {r['events_per_s']:,} | {r['peak_rss_mb']:,} | "
                         f"{r['steps_s']['train']:.1f} | {r['steps_s']['evaluate']:.1f} | {r['ndcg@10']:.4f} | "
                         f"{r['popularity_ndcg@10']:.4f} | {r['blas']} |")  # fmt: skip
    lines += ["", "Peak RSS is the whole process tree (Python driver + Spark JVM), sampled every 0.2 s; evaluate "
              "re-fits the engine on the time split, so each pipeline trains twice."]  # fmt: skip
    return lines


def _speed(sl: dict) -> list[str]:
    return [
        "### Speed layer (one process, real broker)", "",
        f"Rank {sl['rank']}, {sl['n_items']:,} items, {sl['n_users']:,} model users.", "",
        "| events/s (drain a backlog) | event -> UP p50 (ms) at 1,000/s | p99 (ms) | solve per user (µs) | "
        "mean history length |", "|---|---|---|---|---|",
        f"| {sl['events_per_s']:,} | {sl['latency_ms_p50']} | {sl['latency_ms_p99']} | {sl['solve_us_per_user']} | "
        f"{sl['history_len_mean']} |",
        *_speed_scale_out(sl.get("scale_out")),
    ]  # fmt: skip


def _speed_scale_out(so: dict | None) -> list[str]:
    if not so:
        return []
    return ["", f"Two instances in one consumer group vs one, side by side ({so['one']['events']:,} events produced "
                "at full speed while the group folds them in, first event to last commit): "
                f"{so['two']['events_per_s']:,} vs {so['one']['events_per_s']:,} events/s, **{so['ratio']}x** "
                "(same 2 cores, shared with the broker)."]  # fmt: skip


def _serving(sv: dict) -> list[str]:
    ann = sv["approximate"]
    lines = [
        "### Serving layer: GET /recommend", "",
        f"{sv['n_items']:,} items, rank {sv['rank']}, top-{sv['k']}, {sv['n_users']:,} model users; the load "
        f"generator is a separate process on the same {2} cores, spreading its connections evenly over the replicas "
        f"(separate serving processes); {sv['seconds_per_run']} s per run. Max requests/s: "
        "closed loop, 8 connections. Latency: open loop at the offered rate (1,000/s, or half the mode's maximum if "
        "that is lower), measured from when each request was due.", "",
        "| index / replicas | max requests/s | offered rate | p50 ms | p99 ms | errors | RSS MB (all replicas) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for mode, r in sv["modes"].items():
        lines.append(f"| {mode} | {r['max_requests_per_s']:,} | {r['offered_rate']:,}/s | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} | {r['rss_mb']:,} |")  # fmt: skip
    lines += ["", f"Approximate index: recall@10 {ann['recall@10']} against the exact scan ({ann['users']} users, "
              f"{ann['lists']} lists, {ann['probes']} probed). Exact vs the naive full sort, 2 replicas each: "
              f"{sv.get('speedup_vs_full_sort', 'n/a')}x the requests/s. Target: p99 ≤ 10 ms at ≥ 1,000 requests/s "
              "(exact)."]  # fmt: skip
    one, two = sv["modes"].get("exact/1"), sv["modes"].get("exact/2")
    if one and two:
        ratio = two["max_requests_per_s"] / one["max_requests_per_s"]
        lines += ["", f"Two serving replicas vs one (exact): {two['max_requests_per_s']:,} vs "
                      f"{one['max_requests_per_s']:,} requests/s, **{ratio:.2f}x** (same 2 cores, load generator "
                      "included)."]  # fmt: skip
    return lines


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write(results: dict, out_dir: Path, readme: Path = README) -> Path:
    """report.md in `out_dir`, and the same text into the README between the results markers."""
    text = render(results)
    path = out_dir / "report.md"
    path.write_text("# Benchmark report\n\n" + text)
    replace_readme_block(text, readme)
    return path


def replace_readme_block(text: str, readme: Path = README) -> None:
    body = readme.read_text()
    start = body.index("\n", body.index(START)) + 1
    end = body.index(END)
    readme.write_text(body[:start] + text + body[end:])


def readme_block(readme: Path = README) -> str:
    body = readme.read_text()
    return body[body.index("\n", body.index(START)) + 1 : body.index(END)]
