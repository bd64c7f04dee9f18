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
QUALITY_MODELS = ("popularity", "implicit_lib", "spark_als", "implicit_engine")


def render(results: dict) -> str:
    m = results["meta"]
    lines = [
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}. Each section says the "
        "commit and date it was measured at; every cell is one run unless it says otherwise. Times on a shared "
        "machine are noisy: compare within a section. Reproduce everything with `make bench` (`make bench-quick`: "
        "reduced sizes); one section with `.venv/bin/python -m bench.run --only <section>`. Plots (matplotlib): "
        "`bench/results/<section>.png`; all figures: `bench/results/latest.json`.",
    ]
    for name, section in (("quality", _quality), ("freshness", _freshness), ("batch", _batch),
                          ("batch_baseline", _batch_baseline), ("speed_layer", _speed), ("serving", _serving),
                          ("soak", _soak)):  # fmt: skip
        if name in results:
            lines += ["", *section(results[name]), "", _measured(results, name)]
    return "\n".join(lines) + "\n"


def _measured(results: dict, name: str) -> str:
    meta = results["meta"].get("sections", {}).get(name, results["meta"])
    quick = " (quick sizes)" if meta.get("quick") else ""
    cli = {"speed_layer": "speed", "batch_baseline": f"batch --baseline {meta['git_commit']}"}.get(name, name)
    return (
        f"_Measured at commit {meta['git_commit']}, {meta['started_at']}{quick}: `python -m bench.run --only {cli}`._"
    )


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
    lines = ["### Quality on MovieLens-100K (per-user time split, last 20% of each user's events held out, k=10)",
             "", "| model | precision@10 | recall@10 | NDCG@10 | MAP@10 | AUC | coverage |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in QUALITY_MODELS:
        r = q.get(model)
        if r:
            coverage = r.get("coverage", r.get("coverage@10"))
            lines.append(f"| {model} | {r['precision@10']:.4f} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | "
                         f"{r['map@10']:.4f} | {_f(r.get('auc'))} | {_f(coverage)} |")  # fmt: skip
    ratios = q.get("ratios", {})
    if ratios:
        listed = ", ".join(f"{k.replace('_vs_', ' / ')} {v:.2f}x" for k, v in ratios.items())
        lines += ["", f"NDCG@10 ratios: {listed} (targets: ours ≥ implicit's, ≥ 1.8x popularity)."]
    return lines


def _freshness(f: dict) -> list[str]:
    lines = ["### Freshness: does the speed layer earn its keep?", "",
             "Each user's held-out slice is split in time: the first half is streamed (the speed layer folds it in), "
             "the rest is scored. Stale = last night's model; speed = same item factors, user vectors folded in over "
             "history + streamed events; retrain = full refit on history + streamed.", "",
             "| model | NDCG@10 | recall@10 |", "|---|---|---|"]  # fmt: skip
    for name in ("stale", "speed", "retrain"):
        lines.append(f"| {name} | {f[name]['ndcg@10']:.4f} | {f[name]['recall@10']:.4f} |")
    share = f.get("recovered_share")
    lines += ["", f"Share of the retrain's NDCG@10 gain the speed layer recovers: "
              f"{'n/a' if share is None else f'{share:.0%}'} (target ≥ 80%)."]  # fmt: skip
    return lines


def _batch(batch: dict) -> list[str]:
    lines = ["### Batch pipeline (clean + train + evaluate + publish; synthetic, 100k users x 50k items, backfilled)",
             "",
             "| engine | events | seconds | events/s | peak RSS (MB) | clean (s) | train (s) | evaluate (s) | "
             "NDCG@10 | popularity NDCG@10 | BLAS |", "|---" * 11 + "|"]  # fmt: skip
    for engine, by_size in batch.items():
        for n, r in by_size.items():
            steps = r["steps_s"]
            lines.append(f"| {engine} | {int(n):,} | {r['seconds']} | {r['events_per_s']:,} | {r['peak_rss_mb']:,} | "
                         f"{steps.get('clean', 0):.1f} | {steps['train']:.1f} | {steps['evaluate']:.1f} | "
                         f"{r['ndcg@10']:.4f} | {r['popularity_ndcg@10']:.4f} | {r['blas']} |")  # fmt: skip
    lines += ["", "Peak RSS is the whole process tree (Python driver + Spark JVM), sampled every 0.2 s; evaluate "
              "re-fits the engine on the time split, so each pipeline trains twice."]  # fmt: skip
    return lines


def _batch_baseline(base: dict) -> list[str]:
    """The same pipeline at an earlier commit, run side by side with `batch` on a copy of the same bronze."""
    lines = [f"### Batch pipeline: this commit next to {base['commit']} (`--baseline {base['ref']}`), same data, "
             "same run", "", "seconds, baseline / this commit:", "",
             "| engine | events | whole run | spark start | clean | train | evaluate |", "|---" * 7 + "|"]  # fmt: skip
    for engine, by_size in base.items():
        if engine in ("ref", "commit"):
            continue
        for n, r in by_size.items():
            now = r.get("this_commit", {})
            pairs = [f"{r['seconds']:.0f} / {now.get('seconds', 0):.0f}"]
            pairs += [f"{r['steps_s'][k]:.1f} / {now.get('steps_s', {}).get(k, 0):.1f}"
                      for k in ("spark_start", "clean", "train", "evaluate")]  # fmt: skip
            lines.append(f"| {engine} | {int(n):,} | " + " | ".join(pairs) + " |")
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
