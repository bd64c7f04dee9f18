"""The neural recommenders' own targets (issue 16), beside the quality, freshness and reactivity sections.

1. Next-item recall@20 and MRR@20 of SR-GNN next to the item-to-item transition models, ALS and popularity,
   on the same events, with pessimistic ties (an item scoring equal to the target counts as ranked above it):
   - synthetic sessions (`recsys.data.synthetic`, views only, session ids from the generator): sessions that
     start in the last `TEST_SHARE` of the time span are test, every model is fitted on the earlier sessions;
     every prefix of a test session predicts its next item, ranked among every item but the current last one;
     each model sees the prefix as the user's latest events (ALS: the user's trained vector);
   - MovieLens-100K per-user sequences, the project's time split (ties by item id): at every held-out event
     on a known item, the user's events before it are the latest events (SR-GNN cuts its current session from
     them by the 1-hour gap, so an event that opens a session is predicted from the previous one), ranked
     among the items the user has not rated before; ALS folds the user in on that history (its real-time path).
2. Training time of each neural model on 1M synthetic events (all event types, the product's weights): wall
   and CPU seconds, epochs done, whether the time budget stopped it (target ≤ 10 minutes).
3. Serving latency of one SR-GNN answer at 100,000 items: `serving.model.ServingModel.recommend` for a user
   whose latest events arrived in an UP (the trained item table enlarged with jittered copies), one BLAS
   thread, CPU (this thread) and wall per request. NeuMF at 100,000 items: exhaustive vs retriever + re-rank.
4. NeuMF: top-10 overlap of the served ranking (retriever + exact re-rank of `candidates`) with exhaustive
   scoring, and the CPU cost of one real-time user update.

Wall times on this shared 2-core machine are inflated by other tenants; CPU seconds are reported next to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys import registry
from recsys.data import datasets
from recsys.data.inputs import Dataset, EventLog, UserContext
from recsys.evaluation.protocol import dataset_from_events, load_ml100k_events, make_split
from recsys.models.base import Recommender
from recsys.models.capabilities import updates_users
from recsys.models.neural.data import build_sessions, cpu_seconds, prefix_examples
from recsys.settings import Settings, get_settings

K = 20
TEST_SHARE = 0.1
SEEDS = (0, 1, 2)
RECENT = 50  # latest events handed to every model (the artifact's tail for request-time models)


# --- data ------------------------------------------------------------------------------------------------------
def synthetic_dataset(n_events: int, views_only: bool, s: Settings, seed: int = 0) -> Dataset:
    """The generator's stream as a Dataset with its session ids (weights: the settings' event weights)."""
    from recsys.data.synthetic import SyntheticConfig, iter_batches

    table = pa.Table.from_batches(
        list(iter_batches(SyntheticConfig(n_events=n_events, seed=seed), key=b"bench-neural-" + b"0" * 19))
    )
    if views_only:
        table = table.filter(pc.equal(table.column("event_type"), "view"))
    weights = s.event_weights
    kinds = table.column("event_type").to_pylist()
    data, _ = datasets.build(
        table.column("user_id"),
        table.column("item_id"),
        pc.cast(table.column("ts"), pa.int64()).to_numpy(),
        table.column("event_type"),
        np.array([weights[k] for k in kinds], np.float64),
        list(weights),
        session=table.column("session_id"),
    )
    return data


def subset(data: Dataset, keep: np.ndarray) -> Dataset:
    """The dataset of the kept events (same ids and positions)."""
    kept = data.events.take(keep)
    w = kept.weight if kept.weight is not None else np.ones(len(kept), np.float32)
    strengths = sp.csr_matrix((w, (kept.user, kept.item)), shape=(data.n_users, data.n_items), dtype=np.float32)
    strengths.sum_duplicates()
    strengths.sort_indices()
    return Dataset(
        data.user_ids,
        data.item_ids,
        strengths,
        list(data.event_types),
        kept,
        datasets.or_bits(kept.user, kept.item, kept.kind, strengths),
        data.items,
    )


def session_start_ts(events: EventLog) -> np.ndarray:
    """Per event, the first timestamp of its session."""
    codes = events.session if events.session is not None else np.zeros(len(events), np.int64)
    start = np.full(int(codes.max(initial=0)) + 1, np.iinfo(np.int64).max)
    np.minimum.at(start, codes, events.ts_ms)
    return start[codes]


# --- next-item evaluation --------------------------------------------------------------------------------------
def pessimistic_ranks(scores: np.ndarray, targets: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    """1-based rank of each row's target among the non-excluded items; ties count against the target."""
    s = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    for r, items in enumerate(exclude):
        s[r, items] = -np.inf
    t = s[np.arange(len(targets)), targets]
    ranks = (s >= t[:, None]).sum(axis=1).astype(np.float64)
    ranks[np.isneginf(t)] = np.inf  # a model that cannot rank the target never hits it
    return ranks


def recall_mrr(ranks: np.ndarray) -> dict[str, float]:
    hit = ranks <= K
    return {
        f"recall@{K}": float(hit.mean()),
        f"mrr@{K}": float(np.where(hit, 1.0 / ranks, 0.0).mean()),
        "n": int(ranks.size),
    }


def next_item(
    model: Recommender,
    contexts: Sequence[UserContext],
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    batch: int = 1024,
    fold_in: bool = False,
) -> dict[str, float]:
    """recall@K / MRR@K of one fitted model over prepared examples; `fold_in`: stateful models update each user
    from the context first (the speed layer's path)."""
    ranks = np.empty(len(targets))
    c0, t0 = cpu_seconds(), time.perf_counter()
    for lo in range(0, len(targets), batch):
        ctx = list(contexts[lo : lo + batch])
        if fold_in and updates_users(model):
            states = model.update_users(ctx)
            assert states is not None  # a stateful model's
            ctx = [
                UserContext(c.row, c.items, c.strengths, c.recent, c.recent_ts_ms, c.recent_kinds, st)
                for c, st in zip(ctx, states, strict=True)
            ]
        ranks[lo : lo + batch] = pessimistic_ranks(
            model.score(ctx), targets[lo : lo + batch], list(exclude[lo : lo + batch])
        )
    return {
        **recall_mrr(ranks),
        "score_cpu_s": round(cpu_seconds() - c0, 1),
        "score_wall_s": round(time.perf_counter() - t0, 1),
    }


def fitted(name: str, data: Dataset, s: Settings, seed: int | None = None, **overrides) -> tuple[Recommender, dict]:
    model = registry.create(name, s, overrides or None)
    if seed is not None and "seed" in type(model.params).model_fields:
        model = type(model)(model.params.model_copy(update={"seed": seed}))
    c0, t0 = cpu_seconds(), time.perf_counter()
    model.fit(data)
    cost = {"fit_wall_s": round(time.perf_counter() - t0, 1), "fit_cpu_s": round(cpu_seconds() - c0, 1)}
    history = getattr(model, "history", None)
    if history:
        cost["epochs"] = sum(1 for r in history if r.get("epoch", 0) > 0)
        cost["stopped_by_time_budget"] = any(r.get("stopped_by_time_budget") for r in history)
    return model, cost


def baselines(train: Dataset, s: Settings, evaluate: Callable[[Recommender, bool], dict]) -> dict:
    out = {}
    trans, cost = fitted("transitions", train, s)
    out["transitions"] = {**evaluate(trans, False), **cost}
    last = registry.create("transitions_last", s)
    last.share_fit(trans)  # type: ignore[attr-defined]  # the same matrix, queried with the last tie window
    out["transitions_last"] = evaluate(last, False)
    als, cost = fitted("implicit_als", train, s)
    out["implicit_als"] = {**evaluate(als, True), **cost}
    pop, _ = fitted("popularity", train, s)
    out["popularity"] = evaluate(pop, False)
    return out


def synthetic_next_item(n_events: int, s: Settings) -> dict:
    data = synthetic_dataset(n_events, views_only=True, s=s)
    ev = data.events
    start = session_start_ts(ev)
    cut = np.quantile(start, 1.0 - TEST_SHARE)
    train = subset(data, start < cut)
    test = ev.take(start >= cut)
    assert test.session is not None  # synthetic events carry session ids
    order = np.lexsort((np.arange(len(test)), test.ts_ms, test.session))  # each session's events in time order
    test = test.take(order)
    assert test.session is not None
    sessions = build_sessions(test, np.r_[True, test.session[1:] != test.session[:-1]])
    begins, ends, targets = prefix_examples(sessions)
    ts = test.ts_ms  # build_sessions dropped consecutive repeats: recover each kept event's time
    keep = np.ones(len(test), bool)
    sid = np.cumsum(np.r_[True, test.session[1:] != test.session[:-1]])
    keep[1:] = ~((test.item[1:] == test.item[:-1]) & (sid[1:] == sid[:-1]))
    ts = ts[keep]
    users = np.repeat(sessions.users, np.maximum(sessions.lengths - 1, 0))
    contexts = [
        UserContext(
            row=int(u),
            recent=sessions.items[max(b, e - RECENT) : e].astype(np.int64),
            recent_ts_ms=ts[max(b, e - RECENT) : e],
            recent_kinds=np.zeros(min(e - b, RECENT), np.int8),
        )
        for u, b, e in zip(users, begins, ends, strict=True)
    ]
    exclude = [np.array([sessions.items[e - 1]]) for e in ends]  # every item but the current last one

    def evaluate(model: Recommender, _fold: bool) -> dict:
        return next_item(model, contexts, targets, exclude)

    out: dict = {
        "events": n_events,
        "views": len(ev),
        "train_events": len(train.events),
        "test_sessions": len(sessions),
        "examples": len(targets),
        "session_len_median": float(np.median(sessions.lengths)),
    }
    model, cost = fitted("srgnn", train, s)
    out["srgnn"] = {**evaluate(model, False), **cost}
    out.update(baselines(train, s, evaluate))
    return out


def ml100k_next_item(s: Settings, seeds: Sequence[int]) -> dict:
    events = load_ml100k_events()
    split = make_split(events, test_share=s.eval_test_share, event_types=list(s.event_weights))
    train = split.train
    full, _ = dataset_from_events(
        events, user_ids=train.user_ids, item_ids=train.item_ids, event_types=list(train.event_types)
    )
    ptr_full, ptr_train = full.events.indptr(full.n_users), train.events.indptr(train.n_users)
    ev = full.events
    assert ev.weight is not None  # built from weighted events
    contexts, targets, exclude = [], [], []
    for u in range(full.n_users):
        lo, n_train, hi = ptr_full[u], ptr_train[u + 1] - ptr_train[u], ptr_full[u + 1]
        for pos in range(lo + n_train, hi):  # every held-out event (on an item train knows)
            items, inverse = np.unique(ev.item[lo:pos], return_inverse=True)
            strengths = np.bincount(inverse, ev.weight[lo:pos], minlength=len(items)).astype(np.float32)
            a = max(lo, pos - RECENT)
            contexts.append(
                UserContext(
                    u,
                    items.astype(np.int64),
                    strengths,
                    ev.item[a:pos].astype(np.int64),
                    ev.ts_ms[a:pos],
                    ev.kind[a:pos],
                )
            )
            targets.append(int(ev.item[pos]))
            exclude.append(items)
    targets_np = np.array(targets)

    def evaluate(model: Recommender, fold: bool) -> dict:
        return next_item(model, contexts, targets_np, exclude, fold_in=fold)

    out: dict = {"examples": len(targets), "seeds": list(seeds)}
    runs = []
    for seed in seeds:
        model, cost = fitted("srgnn", train, s, seed=seed)
        runs.append({**evaluate(model, False), **cost, "seed": seed})
    out["srgnn"] = {
        key: float(np.mean([r[key] for r in runs])) for key in (f"recall@{K}", f"mrr@{K}", "fit_cpu_s", "fit_wall_s")
    }
    out["srgnn"]["runs"] = runs
    out.update(baselines(train, s, evaluate))
    return out


# --- training time at 1M events, NeuMF's exactness and update cost -----------------------------------------------
def training_time(n_events: int, s: Settings) -> tuple[dict, dict[str, Recommender], Dataset]:
    data = synthetic_dataset(n_events, views_only=False, s=s)
    out: dict = {"events": len(data.events), "users": data.n_users, "items": data.n_items}
    models = {}
    for name in ("neumf", "srgnn"):
        model, cost = fitted(name, data, s)
        out[name] = {**cost, "history": model.history, "time_budget_s": model.params.time_budget_s}  # type: ignore
        models[name] = model
    return out, models, data


def neumf_exactness(model: Recommender, data: Dataset, users: np.ndarray, k: int = 10) -> dict:
    """Mean top-k overlap of the served ranking (retriever + re-rank) with exhaustive NeuMF scoring."""
    from recsys.models.neumf import NeuMF

    assert isinstance(model, NeuMF)
    exhaustive = NeuMF(model.params.model_copy(update={"candidates": 0}))
    exhaustive.scorer, exhaustive.n_items = model.scorer, model.n_items
    overlap = []
    for lo in range(0, len(users), 256):
        ctx = data.contexts(users[lo : lo + 256], 0)
        seen = data.strengths[users[lo : lo + 256]].toarray() > 0
        a, b = np.array(model.score(ctx)), np.array(exhaustive.score(ctx))
        a[seen] = b[seen] = -np.inf
        ta, tb = np.argsort(-a, axis=1)[:, :k], np.argsort(-b, axis=1)[:, :k]
        overlap += [len(set(x) & set(y)) / k for x, y in zip(ta.tolist(), tb.tolist(), strict=True)]
    return {
        "candidates": model.params.candidates,
        "items": data.n_items,
        "users": len(users),
        "top10_overlap_mean": float(np.mean(overlap)),
        "top10_identical_share": float(np.mean(np.array(overlap) == 1)),
    }


def neumf_update_cost(model: Recommender, data: Dataset, users: np.ndarray) -> dict:
    """CPU (this thread) and wall per real-time update of one user: their history plus one new click."""
    assert updates_users(model)  # NeuMF keeps a state per user
    cpu, wall = [], []
    popular = np.argsort(-data.popularity())[:50]
    for u in users.tolist():
        ctx = data.context(u, RECENT)
        click = int(popular[~np.isin(popular, ctx.items)][0])
        ctx.items, ctx.strengths = np.r_[ctx.items, click], np.r_[ctx.strengths, np.float32(1.0)]
        ctx.recent = np.r_[ctx.recent, click]
        c0, t0 = time.thread_time(), time.perf_counter()
        model.update_users([ctx])
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return _latency(cpu, wall)


def _latency(cpu: list[float], wall: list[float]) -> dict:
    c, w = np.array(cpu) * 1000, np.array(wall) * 1000
    return {
        "n": len(c),
        "cpu_ms_p50": round(float(np.percentile(c, 50)), 2),
        "cpu_ms_p99": round(float(np.percentile(c, 99)), 2),
        "wall_ms_p50": round(float(np.percentile(w, 50)), 2),
        "wall_ms_p99": round(float(np.percentile(w, 99)), 2),
    }


# --- serving latency at 100,000 items ------------------------------------------------------------------------------
def enlarged(weights: dict[str, np.ndarray], table: str, n_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The weights with item table(s) grown to n_items rows: jittered copies of the trained rows."""
    rng = np.random.default_rng(seed)
    out = dict(weights)
    for name in (table,) if isinstance(table, str) else table:
        base = weights[name]
        rows = base[rng.integers(0, len(base), n_items)]
        out[name] = (rows + 0.1 * rows.std() * rng.standard_normal(rows.shape)).astype(np.float32)
    return out


def serving_latency(
    srgnn: Recommender, neumf: Recommender, sessions: list[np.ndarray], n_items: int, requests: int
) -> dict:
    from threadpoolctl import threadpool_limits

    from recsys.io.model_store import ModelArtifact, build_manifest
    from recsys.models.neumf import NeuMFScorer
    from recsys.models.srgnn import SRGNN, SRGNNParams, SRGNNScorer
    from recsys.protocol import VectorUpdate
    from serving.model import ServingModel

    model = SRGNN(cast("SRGNNParams", srgnn.params))
    model.scorer = SRGNNScorer(enlarged(srgnn.scorer.weights, "item_emb", n_items))  # type: ignore[attr-defined]
    model.n_items = n_items
    item_ids = np.array([f"i{j:06d}" for j in range(n_items)], dtype=object)
    user_ids = np.array([f"u{u:04d}" for u in range(1000)], dtype=object)
    data = Dataset(user_ids, item_ids, sp.csr_matrix((1000, n_items), dtype=np.float32), ["view"])
    version = "m20260101T000000000000-srgnn"
    serving = ServingModel(ModelArtifact(build_manifest(model, data, version), data, model), {}, Settings())
    cpu, wall, model_cpu = [], [], []
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for r in range(requests):
            user = f"u{r % 1000:04d}"
            seq = sessions[int(rng.integers(0, len(sessions)))]
            recent = [(str(item_ids[j]), "view", 1_767_225_600_000 + 30_000 * t) for t, j in enumerate(seq.tolist())]
            serving.apply(
                VectorUpdate(
                    model_version=version,
                    kind="user",
                    id=user,
                    recent=recent,
                    strengths={i: 1.0 for i, _, _ in recent},
                    event_types={i: ["view"] for i, _, _ in recent},
                )
            )
            c0, t0 = time.thread_time(), time.perf_counter()
            ranked = serving.recommend(user, k=20)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
            assert ranked.source == "speed" and len(ranked.item_ids) == 20
            ctx = serving.context(user)
            assert ctx is not None  # the update just applied
            c0 = time.thread_time()
            model.score([ctx])
            model_cpu.append(time.thread_time() - c0)
        scorer = NeuMFScorer(enlarged(neumf.scorer.weights, ("gmf_item", "mlp_item"), n_items))  # type: ignore
        n_cpu: dict[str, list[float]] = {"exhaustive": [], "retriever+rerank": []}
        n_wall: dict[str, list[float]] = {"exhaustive": [], "retriever+rerank": []}
        scorer.retrieval(scorer.user(0)[0])  # the per-item retriever term is computed once, on the first request
        for r in range(min(requests, 300)):
            gmf, mlp = scorer.user(r % scorer.n_users)
            for mode, c in (("exhaustive", 0), ("retriever+rerank", neumf.params.candidates)):  # type: ignore
                c0, t0 = time.thread_time(), time.perf_counter()
                scorer.ranked_scores(gmf, mlp, c)
                n_cpu[mode].append(time.thread_time() - c0)
                n_wall[mode].append(time.perf_counter() - t0)
    return {
        "items": n_items,
        "k": 20,
        "session_len_median": float(np.median([len(x) for x in sessions])),
        "srgnn_recommend": _latency(cpu, wall),
        "srgnn_score_only_cpu_ms_p99": round(float(np.percentile(model_cpu, 99)) * 1000, 2),
        "neumf_score": {m: _latency(n_cpu[m], n_wall[m]) for m in n_cpu},
    }


def run(
    quick: bool, settings: Settings | None = None, n_events: int | None = None, requests: int | None = None
) -> dict:
    s = settings or get_settings()
    n_events = n_events or (200_000 if quick else 1_000_000)
    out: dict = {"params": {"k": K, "test_share": TEST_SHARE, "quick": quick}}
    seeds = SEEDS[:1] if quick else SEEDS
    c0 = cpu_seconds()
    out["ml100k_next_item"] = ml100k_next_item(s, seeds)
    out["synthetic_next_item"] = synthetic_next_item(n_events, s)
    timing, models, data = training_time(n_events, s)
    out["training_1m"] = timing
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(data.n_users, min(2000, data.n_users), replace=False))
    out["neumf_exactness_synthetic"] = neumf_exactness(models["neumf"], data, users)
    ml = make_split(load_ml100k_events(), test_share=s.eval_test_share, event_types=list(s.event_weights))
    neumf_ml, _ = fitted("neumf", ml.train, s)
    out["neumf_exactness_ml100k"] = neumf_exactness(neumf_ml, ml.train, np.arange(ml.train.n_users))
    out["neumf_update_ml100k"] = neumf_update_cost(neumf_ml, ml.train, np.arange(ml.train.n_users))
    srgnn = models["srgnn"]
    ptr = data.events.indptr(data.n_users)
    sessions = [srgnn.session(data.context(u, RECENT)) for u in users.tolist() if ptr[u + 1] > ptr[u]]  # type: ignore
    sessions = [x for x in sessions if len(x)]
    out["serving_100k"] = serving_latency(
        srgnn, models["neumf"], sessions, 100_000, requests or (500 if quick else 2000)
    )
    out["cpu_s_total"] = round(cpu_seconds() - c0, 1)
    return out


def tables(r: dict) -> list[pd.DataFrame]:
    """Plain frames of the headline numbers (the bench prints them)."""
    rows = []
    for part in ("synthetic_next_item", "ml100k_next_item"):
        for name, v in r.get(part, {}).items():
            if isinstance(v, dict) and f"recall@{K}" in v:
                rows.append({"data": part, "model": name, f"recall@{K}": v[f"recall@{K}"], f"mrr@{K}": v[f"mrr@{K}"]})
    return [pd.DataFrame(rows)]


__all__ = ["ml100k_next_item", "run", "serving_latency", "synthetic_next_item", "training_time"]
