"""Offline quality, side by side in one run: every recommender, popularity and the `implicit` library.

MovieLens-100K, the per-user time split (the last ceil(test_share · n_u) events of each
user are test; items the user saw in train are filtered out of every list and cannot count
as hits). Metrics at k (settings' eval_k, 10), formulas in recsys/evaluation/metrics.py:

    P@k = |rec ∩ rel| / k              R@k = |rec ∩ rel| / min(k, |rel|)
    NDCG@k = Σ_i rel_i / log2(i+1) / IDCG    MAP@k = Σ_i P@i · rel_i / min(k, |rel|)

Every figure is the mean over `SEEDS` (each model's own seed), reported twice: with
equal timestamps ordered as the split orders them (by item id) and with ties shuffled
(a seeded random order per seed), so a gain that comes from the tie order shows.
Each model is compared with ALS (implicit_als) by the paired standard error of the
per-user NDCG difference (per-user NDCG averaged over the seeds first).

Hyper-parameters are never chosen here: each model runs with its defaults, which
come from `bench.tune` (validation carved from train, never the test split).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys import registry
from recsys.evaluation.protocol import EvalSplit, evaluate, load_ml100k_events, make_split, shuffle_ties
from recsys.models.base import Recommender
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SEEDS = (0, 1, 2)
# Measured at the first seed only: the hybrid with SR-GNN fits for ~6 minutes per run here.
FIRST_SEED_ONLY = frozenset({"hybrid_with_srgnn"})
REFERENCE = "implicit_als"
TIE_MODES = ("ordered", "shuffled")


def implicit_lib(s: Settings, seed: int) -> Recommender:
    """The `implicit` library as it ships (conjugate-gradient solves), with the implicit engine's λ and alpha."""
    base = registry.create("implicit_als", s)
    return type(base)(base.params.model_copy(update={"seed": seed, "conjugate_gradient": True}))


def seeded(name: str) -> Callable[[Settings, int], Recommender]:
    def make(s: Settings, seed: int) -> Recommender:
        model = registry.create(name, s)
        if "seed" in type(model.params).model_fields:
            return type(model)(model.params.model_copy(update={"seed": seed}))
        return model

    return make


def hybrid_with(*names: str) -> Callable[[Settings, int], Recommender]:
    """The hybrid with more components in its search, each starting at weight 0 (to measure what they add)."""

    def make(s: Settings, seed: int) -> Recommender:
        model = seeded("hybrid")(s, seed)
        weights = {**model.params.weights, **dict.fromkeys(names, 0.0)}  # type: ignore[attr-defined]
        return type(model)(model.params.model_copy(update={"weights": weights}), settings=s)  # type: ignore[call-arg]

    return make


def entries(s: Settings, with_spark: bool) -> dict[str, Callable[[Settings, int], Recommender]]:
    """What the section compares: every registered recommender (Spark's only with a session), plus implicit_lib."""
    out: dict[str, Callable[[Settings, int], Recommender]] = {
        "popularity": seeded("popularity"),
        "implicit_lib": implicit_lib,
    }
    for name in registry.names():
        if name == "popularity" or (name == "spark_als" and not with_spark):
            continue
        out[name] = seeded(name)
    out["hybrid_with_srgnn"] = hybrid_with("srgnn")
    return out


def paired_se(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-user difference a − b."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def _split(events, mode: str, seed: int, s: Settings) -> EvalSplit:
    from recsys.data.movielens import attributes

    ordered = events if mode == "ordered" else shuffle_ties(events, seed)
    # The catalogue's attributes, as the train job passes them: content (and the hybrid's content part) reads them.
    return make_split(ordered, test_share=s.eval_test_share, event_types=list(s.event_weights), items=attributes())


def run(
    quick: bool, spark: SparkSession | None = None, settings: Settings | None = None, only: list[str] | None = None
) -> dict:
    """Every model, every seed, both tie orders. Keys: tie mode -> model -> mean metrics, per-seed NDCG, fit seconds."""
    s = settings or get_settings()
    k = s.eval_k
    events = load_ml100k_events()
    models = entries(s, with_spark=spark is not None)
    if only:
        models = {name: make for name, make in models.items() if name in only or name == REFERENCE}
    seeds = SEEDS[:1] if quick else SEEDS
    out: dict = {"params": {"k": k, "test_share": s.eval_test_share, "seeds": list(seeds), "reference": REFERENCE}}
    for mode in TIE_MODES:
        per_model: dict[str, dict] = {}
        per_user: dict[str, list[np.ndarray]] = {name: [] for name in models}
        users = None
        for seed in seeds:
            split = _split(events, mode, seed, s)
            for name, make in models.items():
                if name in FIRST_SEED_ONLY and seed != seeds[0]:
                    continue
                model = make(s, seed)
                started = time.perf_counter()
                model.fit(split.train, spark)
                seconds = time.perf_counter() - started
                metrics, users, ndcg = evaluate(model, split, k=k, per_user=True)
                entry = per_model.setdefault(name, {"runs": [], "params": model.params.model_dump()})
                entry["runs"].append({**metrics, "fit_seconds": round(seconds, 2), "seed": seed})
                per_user[name].append(ndcg)
        summary: dict[str, Any] = {}  # per model a dict, and "users": a count
        reference = np.mean(per_user[REFERENCE], axis=0) if REFERENCE in per_user else None
        for name, entry in per_model.items():
            runs = entry["runs"]
            means = {key: float(np.mean([r[key] for r in runs])) for key in runs[0] if key not in ("seed",)}
            ndcg_seeds = [r[f"ndcg@{k}"] for r in runs]
            summary[name] = {
                **means,
                "ndcg_per_seed": ndcg_seeds,
                "seeds": [r["seed"] for r in runs],
                "params": entry["params"],
            }
            if reference is not None and name != REFERENCE:
                diff, se = paired_se(np.mean(per_user[name], axis=0), reference)
                summary[name]["vs_reference"] = {"ndcg_diff": diff, "paired_se": se}
        summary["users"] = len(users) if users is not None else 0
        out[mode] = summary
    return out


__all__ = ["REFERENCE", "SEEDS", "entries", "paired_se", "run"]
