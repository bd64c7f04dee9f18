"""The Markdown report of `make bench`, rendered from `bench/results/latest.json` alone.

It goes to `bench/results/report.md`, the one place results are shown (the README and docs link it
rather than quote numbers), so no page quotes a number the results file does not hold (a unit test
checks the committed report is what the committed results render to).
"""

from __future__ import annotations

from pathlib import Path

from recsys.settings import PROJECT_ROOT

REPORT = PROJECT_ROOT / "bench" / "results" / "report.md"
HEADER = "# Benchmark report\n\n"


def render(results: dict) -> str:
    m = results["meta"]
    commits = sorted({s.get("git_commit", "?") for n, s in m.get("sections", {}).items() if n in results})
    provenance = (
        f"Every section below was measured at commit {commits[0]}."
        if len(commits) == 1
        else f"Sections come from {len(commits)} commits ({', '.join(commits)}): each says its own."
    )
    lines = [
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}. {provenance} Each section "
        "says the commit and the time it started at; every cell is one run unless it says otherwise. Times on a "
        "shared machine are noisy: compare within a section. Targets missed are marked **MISSED**. Reproduce "
        "everything with `make bench` (`make bench-quick`: reduced sizes); one section with "
        "`.venv/bin/python -m bench.run --only <section>`. Plots (matplotlib): `bench/results/<section>.png`; all "
        "figures: `bench/results/latest.json`.",
    ]
    for name, section in (
        ("quality", _quality),
        ("freshness", _freshness),
        ("reactivity", _reactivity),
        ("neural", _neural),
        ("batch", _batch),
        ("batch_baseline", _batch_baseline),
        ("storage", _storage),
        ("speed_layer", _speed),
        ("idle", _idle),
        ("serving", _serving),
        ("candidates", _candidates),
        ("scale", _scale),
        ("availability", _availability),
        ("soak", _soak),
    ):
        if name in results:
            try:
                body = section(results[name])
            except (KeyError, TypeError, IndexError):  # written by an older version of its section
                body = [
                    f"### {name}",
                    "",
                    f"The stored `{name}` results predate this report's format: re-run the section to show them.",
                ]
            lines += ["", *body, "", _measured(results, name)]
    return "\n".join(lines) + "\n"


def _measured(results: dict, name: str) -> str:
    meta = results["meta"].get("sections", {}).get(name, results["meta"])
    quick = " (quick sizes)" if meta.get("quick") else ""
    cli = {"speed_layer": "speed", "batch_baseline": f"batch --baseline {meta['git_commit']}"}.get(name, name)
    dirty = " (with uncommitted changes)" if meta.get("dirty") or "+uncommitted" in meta["git_commit"] else ""
    return (
        f"_Measured at commit {meta['git_commit']}{dirty}, started {meta['started_at']}{quick}: "
        f"`python -m bench.run --only {cli}`._"
    )


def _candidates(c: dict) -> list[str]:
    rows = [
        "### candidates (the hybrid's two-stage serving against its dense scores)",
        "",
        "Fitted on each user's earlier events, the latest 20% held out; in process, ms per user with 1 / 64 users "
        "per call (the ALS column: the ALS component's own exact norm-index top k on the same users).",
        "",
        "| data | items | users | same top-10 | NDCG@10 dense | NDCG@10 two-stage | dense | two-stage | ALS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in c.items():
        cost = v["cost"]
        cells = [
            f"{cost['batch_1'][p]['per_user_ms']:.2f} / {cost['batch_64'][p]['per_user_ms']:.2f}"
            if p in cost["batch_1"]
            else "n/a"
            for p in ("dense", "two_stage", "als_component")
        ]
        rows.append(
            f"| {name} | {v['n_items']:,} | {v['users']:,} | {v['same_top10_share']:.2%} | "
            f"{v['ndcg@10_dense']:.4f} | {v['ndcg@10_two_stage']:.4f} | {' | '.join(cells)} |"
        )
    return rows


def _scale(sc: dict) -> list[str]:
    rows = [
        "### scale (the hybrid served next to ALS through the HTTP server, one process each)",
        "",
        f"Closed loop (8 connections), then both at one offered rate (32 connections), {sc['seconds_per_run']} s "
        "runs; p99 ratio = hybrid / ALS at that rate.",
        "",
        "| items | model | max req/s | offered /s | p50 ms | p99 ms | p99 ratio | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, v in sc["sizes"].items():
        targets = ", ".join(f"{k}{_missed(ok)}" for k, ok in v["targets"].items())
        for name in ("als", "hybrid"):
            m, last = v[name], name == "hybrid"
            rows.append(
                f"| {int(size):,} | {name} | {m['max_requests_per_s']:,.0f} | {v['offered_rate']:,} | "
                f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {v['p99_ratio'] if last else ''} | "
                f"{targets if last else ''} |"
            )
    return rows


def _soak(k: dict) -> list[str]:
    restarts = (
        f"the broker killed with kill -9 {k['broker_kill_9']} times and stopped with SIGTERM "
        f"{k['broker_sigterm']} times ({k['broker_restarts_mid_burst']} of them in the middle of a write "
        "burst) and restarted"
        if "broker_kill_9" in k
        else f"the broker restarted {k['broker_restarts']} times"
    )
    ups = (
        f"{k['chaos_ups_checked']:,} UPs the crashed speed layers published during the chaos checked against the "
        f"events up to their source offset: {k['chaos_ups_not_matching_their_offset']} not matching; "
        if "chaos_ups_checked" in k
        else ""
    )
    return [
        "### Soak: crashes and broker restarts under a stream (`make bench-soak`)",
        "",
        f"{k['events']:,} events (2% malformed) streamed while the archiver and the speed layer were killed with "
        f"SIGKILL {k['kills']} times at random moments, {restarts}; "
        f"{k['processes_died_on_their_own']} processes died on their own. Afterwards: {k['bronze_rows']:,} rows in "
        f"bronze + {k['dlq_rows']:,} in the DLQ: {k['lost_events']} events and {k['lost_dead_letters']} dead letters "
        f"lost, {k['duplicated']} duplicated; {ups}"
        f"{k['users_checked']:,} users' final vectors equal an uninterrupted run's. Sends retried after the broker "
        f"did not acknowledge them: {k.get('send_retries_logged', 'n/a')} times. Streaming took "
        f"{k['streaming_seconds']} s; the final catch-up after the last kill {k['final_catch_up_seconds']} s.",
    ]


def _quality(q: dict) -> list[str]:
    params = q["params"]
    k, seeds, reference = params["k"], params["seeds"], params["reference"]
    lines = [
        f"### Quality on MovieLens-100K (per-user time split, last 20% of each user's events held out, k={k})",
        "",
        f"Mean of {len(seeds)} seed(s) {seeds}. `±` is the paired standard error of the per-user NDCG@{k} "
        f"difference to {reference} (per-user NDCG averaged over the seeds first). Hyper-parameters: each "
        "model's defaults (see the model's file for where they come from).",
    ]
    for mode in ("ordered", "shuffled"):
        if mode not in q:
            continue
        title = "ties ordered as the split orders them (by item id)" if mode == "ordered" else "ties shuffled"
        lines += [
            "",
            f"**{title}** ({q[mode].get('users', 0)} users)",
            "",
            f"| model | P@{k} | R@{k} | F1@{k} | NDCG@{k} | MAP@{k} | AUC | coverage | NDCG vs {reference} |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [(name, r) for name, r in q[mode].items() if isinstance(r, dict)]
        for name, r in sorted(rows, key=lambda nr: -nr[1].get(f"ndcg@{k}", 0)):
            vs = r.get("vs_reference")
            diff = f"{vs['ndcg_diff']:+.4f} ± {vs['paired_se']:.4f}" if vs else "—"
            if len(r.get("seeds", seeds)) < len(seeds):
                name = f"{name} (seed {', '.join(map(str, r['seeds']))} only)"
            lines.append(
                f"| {name} | {r[f'precision@{k}']:.4f} | {r[f'recall@{k}']:.4f} | {r[f'f1@{k}']:.4f} | "
                f"{r[f'ndcg@{k}']:.4f} | {r[f'map@{k}']:.4f} | {_f(r.get('auc'))} | "
                f"{_f(r.get(f'coverage@{k}'))} | {diff} |"
            )
    lines += _quality_targets(q, k)
    return lines


def _quality_targets(q: dict, k: int) -> list[str]:
    ordered = q.get("ordered", {})
    pop = ordered.get("popularity", {}).get(f"ndcg@{k}")
    all_seeds = len(q["params"]["seeds"])
    best = max(
        (
            (n, r)
            for n, r in ordered.items()
            if isinstance(r, dict) and n != "popularity" and len(r.get("seeds", range(all_seeds))) == all_seeds
        ),
        key=lambda nr: nr[1].get(f"ndcg@{k}", 0),
        default=None,
    )
    if not pop or best is None:
        return []
    name, r = best
    value = r[f"ndcg@{k}"]
    ok = value >= 0.30 and value >= 2.5 * pop
    vs = r.get("vs_reference")
    beats = vs is not None and vs["ndcg_diff"] > 2 * vs["paired_se"]
    mark = "met" if ok and beats else "**MISSED**"
    margin = f", {vs['ndcg_diff'] / vs['paired_se']:.1f} paired SE over ALS" if vs else ""
    return [
        "",
        f"Target NDCG@{k} ≥ 0.30 and ≥ 2.5x popularity, beating ALS by > 2 paired SE: best is {name} with "
        f"{value:.4f} ({value / pop:.2f}x popularity{margin}): {mark}.",
    ]


def _freshness(f: dict) -> list[str]:
    split = f.get("split", {})
    k = split.get("k", 10)
    lines = [
        "### Freshness: what the real-time path earns, per recommender",
        "",
        "Each user's held-out slice is split in time: the first half is streamed, the rest is scored. Stale = "
        "the batch model and the user as they were; realtime = the same model, the user's history and latest "
        "events with the streamed ones (stateful models updated as the speed layer does, ALS by exact fold-in); "
        "retrain = the same recommender fitted again on history + streamed. Recovered = (realtime − stale) / "
        "(retrain − stale); vs ALS retrain = the same gain over ALS's retrain gain. A simulation: computed in one "
        "process with the speed layer's code, the events do not go through Kafka (the `speed` section measures "
        "the running speed layer over Kafka).",
        "",
        f"| model | stale NDCG@{k} | realtime | retrain | recovered (target ≥ 100%) | vs ALS retrain |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in f.items():
        if not isinstance(r, dict) or "stale" not in r:
            continue
        share, vs = r.get("recovered_share"), r.get("vs_als_retrain")
        mark = "" if share is None or share >= 1.0 else " **MISSED**"
        lines.append(
            f"| {name} | {r['stale'][f'ndcg@{k}']:.4f} | {r['realtime'][f'ndcg@{k}']:.4f} | "
            f"{r['retrain'][f'ndcg@{k}']:.4f} | {_pct(share)}{mark} | {_pct(vs)} |"
        )
    return lines


def _reactivity(r: dict) -> list[str]:
    lines = [
        "### Reactivity after one click, and cold items (MovieLens-100K, per-user time split)",
        "",
        f"Users with ≥ {r['params']['min_events']} train events get one new view (a seeded pick among the 50 "
        "most popular items they have not seen) through the real-time path; `changed` is how many of their "
        "top-10 items change (the viewed item is excluded before and after). Cold items: catalogue items with "
        "no train event; recall@10 on held-out events on them, and for a new visitor whose first click is a "
        "cold item, answers scoring ≤ 0 (serving answers those from popular items instead).",
        "",
        "| model | top-10 changed (target ≥ 3) | users seeing no change | recall@10 on cold items | "
        "zero-score visitor answers |",
        "|---|---|---|---|---|",
    ]
    for name, v in r.items():
        if isinstance(v, dict) and "mean_changed" in v:
            cold = v.get("recall@10_on_cold")
            mark = "" if v["mean_changed"] >= 3 else " **MISSED**"
            lines.append(
                f"| {name} | {v['mean_changed']:.2f}{mark} | {v['share_unchanged']:.0%} | "
                f"{'n/a' if cold is None else f'{cold:.3f}'} | {v['visitor_answers_scoring_zero_or_less']} "
                f"of {v['visitor_answers']} |"
            )
    return lines


def _neural(n: dict) -> list[str]:
    k = n["params"]["k"]
    lines = [
        "### Neural recommenders: next item, training time, serving latency (`bench/neural.py`)",
        "",
        f"Next-item recall@{k} and MRR@{k} (ties count against the target) on the same events for every model. "
        "Synthetic: the generator's sessions (views), the last 10% of sessions by start time are test, every "
        "prefix predicts its next item among all items but the current last one. MovieLens-100K: every "
        "held-out event of the time split predicted from the user's events before it, among the items they "
        "had not rated; ALS folds the user in on that history.",
        "",
        f"| data | model | recall@{k} | MRR@{k} | fit CPU s |",
        "|---|---|---|---|---|",
    ]
    for part, label in (("synthetic_next_item", "synthetic"), ("ml100k_next_item", "MovieLens-100K")):
        rows = [(name, r) for name, r in n.get(part, {}).items() if isinstance(r, dict) and f"recall@{k}" in r]
        for name, r in sorted(rows, key=lambda nr: -nr[1][f"recall@{k}"]):
            cpu = r.get("fit_cpu_s")
            lines.append(
                f"| {label} | {name} | {r[f'recall@{k}']:.4f} | {r[f'mrr@{k}']:.4f} | "
                f"{'—' if cpu is None else f'{cpu:.0f}'} |"
            )
    t = n.get("training_1m", {})
    if t:
        lines += [
            "",
            f"Training on {t['events']:,} synthetic events ({t['users']:,} users × {t['items']:,} items), "
            "target ≤ 600 s each:",
            "",
            "| model | wall s | CPU s | epochs | stopped by the time budget |",
            "|---|---|---|---|---|",
        ]
        for name in ("neumf", "srgnn"):
            r = t[name]
            mark = "" if r["fit_wall_s"] <= 600 else " **MISSED**"
            lines.append(
                f"| {name} | {r['fit_wall_s']}{mark} | {r['fit_cpu_s']} | {r.get('epochs')} | "
                f"{r.get('stopped_by_time_budget')} (budget {r['time_budget_s']:.0f} s) |"
            )
    sv = n.get("serving_100k", {})
    if sv:
        r = sv["srgnn_recommend"]
        mark = "met" if r["cpu_ms_p99"] <= 20 else "**MISSED**"
        lines += [
            "",
            f"Serving one SR-GNN answer (`ServingModel.recommend`, top-{sv['k']}) at {sv['items']:,} items: "
            f"CPU p50 {r['cpu_ms_p50']} ms, p99 {r['cpu_ms_p99']} ms (target p99 ≤ 20 ms: {mark}); wall "
            f"p50 {r['wall_ms_p50']} ms, p99 {r['wall_ms_p99']} ms on the shared machine ({r['n']} "
            "requests).",
        ]
        for mode, v in sv.get("neumf_score", {}).items():
            lines.append(
                f"NeuMF scoring at {sv['items']:,} items, {mode}: CPU p50 {v['cpu_ms_p50']} ms, p99 "
                f"{v['cpu_ms_p99']} ms."
            )
    for key, label in (("neumf_exactness_ml100k", "MovieLens-100K"), ("neumf_exactness_synthetic", "synthetic")):
        e = n.get(key)
        if e:
            lines.append(
                f"NeuMF served ranking vs exhaustive ({label}, {e['items']:,} items, {e['candidates']} "
                f"candidates): mean top-10 overlap {e['top10_overlap_mean']:.3f}, identical for "
                f"{e['top10_identical_share']:.0%} of {e['users']} users."
            )
    u = n.get("neumf_update_ml100k")
    if u:
        lines.append(
            f"NeuMF real-time update of one user (history + one click): CPU p50 {u['cpu_ms_p50']} ms, p99 "
            f"{u['cpu_ms_p99']} ms."
        )
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _batch(batch: dict) -> list[str]:
    lines = [
        "### Batch pipeline (clean + train + evaluate + publish; synthetic, 100k users x 50k items, backfilled)",
        "",
        "| engine | events | seconds | events/s | peak RSS (MB) | clean (s) | train (s) | evaluate (s) | "
        "NDCG@10 | popularity NDCG@10 | BLAS |",
        "|---" * 11 + "|",
    ]
    for engine, by_size in batch.items():
        for n, r in by_size.items():
            steps = r["steps_s"]
            lines.append(
                f"| {engine} | {int(n):,} | {r['seconds']} | {r['events_per_s']:,} | {r['peak_rss_mb']:,} | "
                f"{steps.get('clean', 0):.1f} | {steps['train']:.1f} | {steps['evaluate']:.1f} | "
                f"{r['ndcg@10']:.4f} | {r['popularity_ndcg@10']:.4f} | {r['blas']} |"
            )
    lines += [
        "",
        "Peak RSS is the whole process tree (Python driver + Spark JVM), sampled every 0.2 s; evaluate "
        "re-fits the engine on the time split, so each pipeline trains twice.",
    ]
    return lines


def _storage(st: dict) -> list[str]:
    """The batch pipeline with the lake and models on local disk, then on a local HDFS; a replica's swap-in."""
    p, ratio = st["params"], st["hdfs_over_local"]
    lines = [
        f"### Storage: the lake and models on local disk vs HDFS ({p['engine']}, {p['events']:,} events, same "
        "data, same run)",
        "",
        "| storage | seconds | clean (s) | train (s) | evaluate (s) | publish (s) | peak RSS (MB) | model (MB) | "
        f"swap-in (s, median of {p['swaps']}) | NDCG@10 |",
        "|---" * 10 + "|",
    ]
    for storage in ("local", "hdfs"):
        r, steps = st[storage], st[storage]["steps_s"]
        lines.append(
            f"| {storage} | {r['seconds']:.0f} | {steps['clean']:.1f} | {steps['train']:.1f} | "
            f"{steps['evaluate']:.1f} | {steps['publish']:.2f} | {r['peak_rss_mb']:,} | "
            f"{r['swap_in_s']['model_mb']:,} | {r['swap_in_s']['median']:.2f} | "
            f"{r['ndcg@10']:.4f} |"
        )
    lines += [
        "",
        f"HDFS / local: whole pipeline {ratio['pipeline']:.2f}x, clean {ratio['clean']:.2f}x, train "
        f"{ratio['train']:.2f}x, evaluate {ratio['evaluate']:.2f}x, publish {ratio['publish']:.2f}x, swap-in "
        f"{ratio['swap_in']:.2f}x. One NameNode and one DataNode on the same 2 cores as Spark; swap-in is "
        "`model_store.load_from` plus the catalogue and the `ServingModel`, as `serving.follower` swaps a "
        "model in: memory-mapped from local disk, copied to a temporary local folder and read whole from "
        "HDFS.",
    ]
    return lines


def _batch_baseline(base: dict) -> list[str]:
    """The same pipeline at an earlier commit, run side by side with `batch` on a copy of the same bronze."""
    lines = [
        f"### Batch pipeline: this commit next to {base['commit']} (`--baseline {base['ref']}`), same data, same run",
        "",
        "seconds, baseline / this commit:",
        "",
        "| engine | events | whole run | spark start | clean | train | evaluate |",
        "|---" * 7 + "|",
    ]
    for engine, by_size in base.items():
        if engine in ("ref", "commit"):
            continue
        for n, r in by_size.items():
            now = r.get("this_commit", {})
            pairs = [f"{r['seconds']:.0f} / {now.get('seconds', 0):.0f}"]
            pairs += [
                f"{r['steps_s'][k]:.1f} / {now.get('steps_s', {}).get(k, 0):.1f}"
                for k in ("spark_start", "clean", "train", "evaluate")
            ]
            lines.append(f"| {engine} | {int(n):,} | " + " | ".join(pairs) + " |")
    return lines


def _speed(sl: dict) -> list[str]:
    return [
        "### Speed layer (one process, real broker)",
        "",
        f"Rank {sl['rank']}, {sl['n_items']:,} items, {sl['n_users']:,} model users.",
        "",
        "| events/s (drain a backlog) | event -> UP p50 (ms) at 1,000/s | p99 (ms) | solve per user (µs) | "
        "mean history length |",
        "|---|---|---|---|---|",
        f"| {sl['events_per_s']:,} | {sl['latency_ms_p50']} | {sl['latency_ms_p99']} | {sl['solve_us_per_user']} | "
        f"{sl['history_len_mean']} |",
        *_speed_scale_out(sl.get("scale_out")),
        *_kafka_reference(sl),
    ]


def _missed(ok: bool) -> str:
    return "" if ok else " **MISSED**"


def _kafka_reference(sl: dict) -> list[str]:
    ref = sl.get("kafka_reference")
    if not ref:
        return []
    raw, ratio = ref["kafka_python_consume"], sl["speed_vs_raw_consume"]
    cp, pp = ref["consumer_performance"], ref["producer_performance"]
    p50, p99 = sl["latency_ms_p50"], sl["latency_ms_p99"]
    return [
        "",
        "The same broker and the same events, side by side (records/s; Kafka's tools from the fetched jars are "
        "the ceiling, a bare kafka-python consumer is what any Python service can get):",
        "",
        "| speed layer (fold-in + publish) | kafka-python consume, nothing else | Kafka ConsumerPerformance | "
        "kafka-python produce (acks=all) | Kafka ProducerPerformance (acks=all) |",
        "|---|---|---|---|---|",
        f"| {sl['events_per_s']:,} | {raw['records_per_s']:,} | {cp['records_per_s']:,} | "
        f"{ref['kafka_python_produce_per_s']:,} | {pp['records_per_s']:,} |",
        "",
        f"Speed layer / kafka-python consume: **{ratio}** (target ≥ 0.5{_missed(ratio >= 0.5)}). "
        f"Event → UP at 1,000 events/s: p50 {p50} ms (target ≤ 20{_missed(p50 <= 20)}), p99 {p99} ms "
        f"(target ≤ 100{_missed(p99 <= 100)}). The speed layer's clock starts at its first committed batch "
        f"(start-up and group join excluded); the consumers' at their first poll. Records: "
        f"{raw['records']:,} of {raw['mean_record_bytes']} bytes on average.",
    ]


def _idle(idle: dict) -> list[str]:
    share = idle["cpu_percent_of_one_core"]
    return [
        "### Idle CPU of the long-running services",
        "",
        f"Each service as its own process, no traffic for {idle['window_s']} s (after {idle['settle_s']} s to "
        "settle): CPU time of all its threads over the window, in % of one core (target ≤ 2% each).",
        "",
        "| " + " | ".join(share) + " |",
        "|" + "---|" * len(share),
        "| " + " | ".join(f"{v}{_missed(v <= idle['target_percent'])}" for v in share.values()) + " |",
    ]


def _availability(a: dict) -> list[str]:
    load, targets = a.get("load", {}), a["targets"]
    load_p99 = load.get("latency_ms", {}).get("p99", "")
    return [
        "### Availability: an item marked unavailable leaves every answer",
        "",
        f"`item_sold_out` posted to /events ({a['trials']} trials) while a load generator offers "
        f"{a['offered_rate']} GET /recommend per second (ALS, one serving process, the speed layer): seconds from "
        "the POST's answer until no probe user's list holds the item (target p99 ≤ 1 s), then `item_back`.",
        "",
        "| achieved req/s | load p99 ms | gone p50 s | gone p99 s | gone max s | back p50 s | reappeared |",
        "|---|---|---|---|---|---|---|",
        f"| {load.get('requests_per_s', '')}{_missed(targets['load_held_500_per_s'])} | {load_p99} | "
        f"{a['gone_p50_s']} | {a['gone_p99_s']}{_missed(targets['gone_p99_le_1s'])} | {a['gone_max_s']} | "
        f"{a['back_p50_s']} | {a['reappeared']} |",
    ]


def _speed_scale_out(so: dict | None) -> list[str]:
    if not so:
        return []
    return [
        "",
        f"Two instances in one consumer group vs one, side by side ({so['one']['events']:,} events produced "
        "at full speed while the group folds them in, first event to last commit): "
        f"{so['two']['events_per_s']:,} vs {so['one']['events_per_s']:,} events/s, **{so['ratio']}x** "
        "(same 2 cores, shared with the broker).",
    ]


def _serving(sv: dict) -> list[str]:
    if "exactness" not in sv:  # a result from before the norm-bounded scan
        return [
            "### Serving layer: GET /recommend",
            "",
            "(older result format: rerun `python -m bench.run --only serving`)",
        ]
    ex, bw, lim = sv["exactness"], sv["bandwidth"], sv.get("physical_limit_rps", {})
    lines = [
        "### Serving layer: GET /recommend",
        "",
        f"{sv['n_items']:,} items, rank {sv['rank']}, top-{sv['k']}, {sv['n_users']:,} model users (ALS). The load "
        "generators run on the same 2 cores as the servers (and this machine is shared with other jobs: compare "
        "within the run). Replicas are separate serving processes on their own ports, connections spread evenly. "
        f"{sv['seconds_per_run']} s per run. Max requests/s: closed loop, 8 connections. Latency: open loop at the "
        "offered rate (1,000/s, or half the mode's maximum if that is lower), from when each request was due. "
        "wrk: closed loop, 8 connections (`bench/wrk_recommend.lua` spreads users).",
        "",
        "| mode / replicas | max requests/s | offered rate | p50 ms | p99 ms | wrk requests/s | wrk p50 / p99 ms "
        "| errors | RSS MB | share of physical limit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in sv["modes"].items():
        w = r.get("wrk") or {}
        wrk = (f"{w['requests_per_s']:,}", f"{w['p50_ms']} / {w['p99_ms']}") if w else ("n/a", "n/a")
        share = sv.get("share_of_physical_limit", {}).get(mode)
        lines.append(
            f"| {mode} | {r['max_requests_per_s']:,} | {r['offered_rate']:,}/s | {r['p50_ms']} | "
            f"{r['p99_ms']} | {wrk[0]} | {wrk[1]} | {r['errors']} | {r['rss_mb']:,} | "
            f"{'n/a' if share is None else f'{share:.1%}'} |"
        )
    speed = sv.get("speedup_vs_full_sort", {})
    fast = sv.get("fast_path_speedup")
    if fast:
        lines += [
            "",
            f"The raw ASGI route (`serving/fast.py`) against the same server without it (`exact/1/no_fast_path`, "
            f"`RECSYS_SERVING_FAST_PATH=false`): {fast['requests_per_s']}x the requests/s closed loop, "
            f"{fast['p99_at_rate']}x lower p99"
            + (" at the same offered rate." if fast["same_offered_rate"] else " (at different offered rates)."),
        ]
    lines += [
        "",
        f"Exact answers: {ex['same_as_fp32_full_sort']}/{ex['users']} users get the same top-{sv['k']} as the fp32 "
        f"full sort of every item's score (and {ex['same_as_blas_full_sort']}/{ex['users']} the same as a BLAS "
        "product + sort, whose last-bit rounding differs); `tests/unit/test_norm_index.py` proves it on random "
        "factors, exclusions, filters and ties. "
        f"The scan read {ex['blocks_per_request']} blocks of {ex['block_bytes'] // 1024} KB per request "
        f"({ex['bytes_per_request'] / 1e6:.2f} MB) instead of the whole {ex['full_scan_bytes'] / 1e6:.1f} MB item "
        f"matrix. Memory bandwidth measured in the same run (numpy copy, one thread): "
        f"{bw['item_matrix_gb_s']} GB/s on a matrix-sized array, {bw['dram_256mb_gb_s']} GB/s on 256 MB; physical "
        f"limit (bytes per request ÷ bandwidth): {lim.get('exact_scan', 0):,} requests/s for the exact scan, "
        f"{lim.get('full_scan', 0):,} for a full scan.",
        "",
        "Against the naive full sort (one process): " + ", ".join(f"{m} {x}x" for m, x in speed.items()) + " the "
        "requests/s. Target: ≥ 1,000 requests/s with p99 ≤ 10 ms (exact), one process and two replicas: "
        + ", ".join(f"{m} {'met' if ok else '**MISSED**'}" for m, ok in sv.get("target_met", {}).items())
        + ".",
    ]
    hv = sv.get("hybrid_vs_als")
    if hv:
        hm = sv.get("hybrid_model", {})
        lines += [
            "",
            f"Hybrid vs ALS at {sv['n_items']:,} items, one process each, open loop at "
            f"{hv['offered_rate']}/s "
            f"(the hybrid's components: {', '.join(hm.get('components', []))}; re-ranker "
            f"{'on' if hm.get('reranker') else 'off'}): p50 {hv['hybrid']['latency_ms']['p50']} vs "
            f"{hv['als']['latency_ms']['p50']} ms, p99 {hv['hybrid']['latency_ms']['p99']} vs "
            f"{hv['als']['latency_ms']['p99']} ms, **{hv['p99_ratio']}x** (target ≤ 2x: "
            f"{'met' if sv.get('hybrid_target_met') else '**MISSED**'}).",
        ]
    bulk = sv.get("batch_vs_single")
    if bulk:
        lines += [
            "",
            f"Bulk (`POST /recommend/batch`, docs/bulk.md): {bulk['users']:,} users in one call, best of "
            f"{len(bulk['batch_s'])}: {bulk['batch_users_per_s']:,} users/s, against {bulk['single_requests_per_s']:,} "
            f"single calls/s closed loop: **{bulk['ratio']}x** (target ≥ 10x: "
            f"{'met' if sv.get('batch_target_met') else '**MISSED**'}); {bulk['same_answers']}/{bulk['users']} "
            "answers the same as the single call's.",
        ]
    one, two = sv["modes"].get("exact/1"), sv["modes"].get("exact/2")
    if one and two:
        ratio = two["max_requests_per_s"] / one["max_requests_per_s"]
        lines += [
            "",
            f"Two serving replicas vs one (exact): {two['max_requests_per_s']:,} vs "
            f"{one['max_requests_per_s']:,} requests/s, **{ratio:.2f}x** (same 2 cores, load generator "
            "included).",
        ]
    return lines


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write(results: dict, out_dir: Path) -> Path:
    """report.md in `out_dir`."""
    path = out_dir / "report.md"
    path.write_text(HEADER + render(results))
    return path
