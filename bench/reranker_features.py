"""Would feature tables help the hybrid's re-ranker? Its validation NDCG@10 with and without their candidate features.

The features a user/item feature table would give, per (user, candidate), computed from the training
`Dataset` (what batch and serving both have): the user's share of the candidate's category, the
distance between the candidate's price band and the user's median price band (band b: prices in
[2^b, 2^(b+1))) and whether both are known, log days from the candidate's last event to the user's
latest, log purchases per view of the candidate, and the user's recency (log days from their latest
event to the data's newest; a per-user constant cannot reorder a user's candidates on its own, so it
enters times the category share).

MovieLens-100K as `bench.tune` splits it (the test split is dropped at once): the hybrid's own tuning
runs on the train part (components fitted on its holdout's fit part, blend weights chosen), then the
re-ranker's cross-validation over the validation users (2 folds × 3 partitions, the L2 grid) runs
twice on the same candidates: with the re-ranker's features, and with those plus the table features.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.reranker_features
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bench.tune import validation_split
from recsys import registry
from recsys.data.inputs import Dataset, UserContext
from recsys.models.hybrid import model as hybrid_model
from recsys.models.hybrid.blend import ndcg
from recsys.models.hybrid.reranker import Reranker, cross_validate
from recsys.settings import get_settings

if TYPE_CHECKING:
    from recsys.models.hybrid import Hybrid

DAY_MS = 86_400_000
NAMES = ("category_share", "band_distance", "band_known", "item_recency", "purchases_per_view", "recency_x_share")


def table_features(train: Dataset, users: list[UserContext], cand: np.ndarray) -> np.ndarray:
    """(users × candidates × 6) the feature tables' candidate features (see the module doc)."""
    attrs = train.attributes
    cats = np.array([c if c is not None else "" for c in attrs.category], dtype=object)
    codes, cat_index = np.unique(cats, return_inverse=True)
    price = attrs.price.astype(float)
    band = np.full(len(price), np.nan)
    band[price > 0] = np.floor(np.log2(price[price > 0]))
    ev = train.events
    last_ts = np.full(train.n_items, -1, np.int64)
    np.maximum.at(last_ts, ev.item, ev.ts_ms)
    per_type = {t: np.bincount(ev.item[ev.kind == k], minlength=train.n_items) for k, t in enumerate(train.event_types)}
    zero = np.zeros(train.n_items)
    per_view = per_type.get("purchase", zero) / np.maximum(per_type.get("view", zero), 1)
    newest = int(ev.ts_ms.max())
    out = np.zeros((*cand.shape, len(NAMES)))
    for r, ctx in enumerate(users):
        c = cand[r]
        hist = ctx.items[(ctx.items >= 0) & (ctx.items < train.n_items)]
        shares = np.bincount(cat_index[hist], minlength=len(codes)) / max(len(hist), 1)
        out[r, :, 0] = shares[cat_index[c]]
        known = price[hist][np.isfinite(price[hist]) & (price[hist] > 0)]
        user_band = np.floor(np.log2(np.median(known))) if len(known) else np.nan
        distance = np.abs(band[c] - user_band)
        out[r, :, 1] = np.where(np.isfinite(distance), distance, 0.0)
        out[r, :, 2] = np.isfinite(distance)
        end = int(ctx.recent_ts_ms[-1]) if len(ctx.recent_ts_ms) else newest
        out[r, :, 3] = np.log1p(np.where(last_ts[c] >= 0, np.maximum(end - last_ts[c], 0) / DAY_MS, 1e4))
        out[r, :, 4] = np.log(per_view[c] + 1e-3)
        out[r, :, 5] = np.log1p((newest - end) / DAY_MS) * out[r, :, 0]
    return out


def tuned_candidates() -> dict[str, Any]:
    """The hybrid's tuning on the train part, stopped where the re-ranker is chosen: what it would be chosen on."""
    seen: dict[str, Any] = {}
    holdout, candidate_features = hybrid_model.holdout, hybrid_model.candidate_features

    def keep_holdout(data, share):
        seen["train"], relevant = holdout(data, share)
        return seen["train"], relevant

    def keep_features(norm, priors, users, *args, **kwargs):
        seen["cand"], seen["feats"] = candidate_features(norm, priors, users, *args, **kwargs)
        seen["users"] = list(users)
        return seen["cand"], seen["feats"]

    def keep_labels(feats, labels, relevant, cand, l2_grid, seed, always=False, components=None):
        seen.update(labels=labels, relevant=relevant, l2_grid=l2_grid, seed=seed)
        return None, {}

    patched = {"holdout": keep_holdout, "candidate_features": keep_features, "choose_reranker": keep_labels}
    saved = {name: getattr(hybrid_model, name) for name in patched}
    try:
        for name, fn in patched.items():
            setattr(hybrid_model, name, fn)
        train_part = cast("Dataset", validation_split()[1])
        model = cast("Hybrid", registry.create("hybrid", get_settings()))
        model.n_items = train_part.n_items
        model._tune(train_part, None)
    finally:
        for name, fn in saved.items():
            setattr(hybrid_model, name, fn)
    return seen


def per_user_ndcg(feats: np.ndarray, seen: dict[str, Any], l2: float) -> np.ndarray:
    """Each validation user's cross-validated NDCG@10 (the folds of `cross_validate`)."""
    cand, labels, relevant = seen["cand"], seen["labels"], seen["relevant"]
    n = feats.shape[0]
    total = np.zeros(n)
    for rep in range(3):
        fold = np.random.default_rng(seen["seed"] + rep).integers(0, 2, n)
        for f in (0, 1):
            train, test = fold != f, fold == f
            order = Reranker.fit(feats[train], labels[train], l2, []).order(feats[test])
            total[test] += ndcg(np.take_along_axis(cand[test], order, 1)[:, :10], relevant[np.flatnonzero(test)])
    return total / 3


def main() -> None:
    started = time.perf_counter()
    seen = tuned_candidates()
    base, cand = seen["feats"], seen["cand"]
    extra = table_features(seen["train"], seen["users"], cand)
    both = np.concatenate([base, extra], axis=-1)
    print(f"{len(seen['users'])} validation users, {cand.shape[1]} candidates each")
    print(
        "table features' std:",
        dict(zip(NAMES, np.round(extra.reshape(-1, len(NAMES)).std(axis=0), 4).tolist(), strict=True)),
    )
    best = {}
    for label, feats in (("without", base), ("with", both)):
        cv = cross_validate(feats, seen["labels"], seen["relevant"], cand, seen["l2_grid"], seed=seen["seed"])
        best[label] = max(cv["reranked"], key=lambda k: cv["reranked"][k])
        print(
            f"{label} table features: blend {cv['blend']:.4f}; re-ranked by L2 "
            f"{ {k: round(v, 4) for k, v in cv['reranked'].items()} }"
        )
    gain = per_user_ndcg(both, seen, float(best["with"])) - per_user_ndcg(base, seen, float(best["without"]))
    print(
        f"with - without (each at its best L2): {gain.mean():+.4f} ± {gain.std(ddof=1) / np.sqrt(len(gain)):.4f} "
        "(paired SE)"
    )
    l2 = float(best["without"])
    for j, name in enumerate(NAMES):
        one = np.concatenate([base, extra[..., j : j + 1]], axis=-1)
        cv = cross_validate(one, seen["labels"], seen["relevant"], cand, [l2], seed=seen["seed"])
        print(f"  + {name} alone (L2 {l2}): {cv['reranked'][str(l2)]:.4f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
