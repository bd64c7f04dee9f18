"""Where the models' default hyper-parameters come from: a search on validation carved from MovieLens-100K's train part.

The test split is never read. Events are split as the quality bench splits them
(per user, the latest 20% are test) and the test part is dropped at once; the train
part is split again by the same rule into a validation fit set and validation
relevant items. Each family is then searched one parameter at a time around its
defaults (`GRIDS`; a value replaces the current one only if it wins by more than
`MIN_GAIN` validation NDCG@10, so near-ties keep the simpler or reference value), in
the order the grid lists them, for `ROUNDS` passes. Last, the hybrid is fitted on the
train part with its own in-fit tuning: its `holdout` of the train part is this same
validation split, so the weights and re-ranker it prints are what its defaults cite.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.tune [--only item_knn,ease] [--no-hybrid]

Prints, per family, each trial and the chosen values (and a JSON summary at the end).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, cast

from recsys import registry
from recsys.data.movielens import attributes
from recsys.evaluation.protocol import EvalSplit, evaluate, load_ml100k_events, make_split, time_split
from recsys.settings import get_settings

if TYPE_CHECKING:
    from recsys.models.hybrid import Hybrid

TEST_SHARE = 0.2
MIN_GAIN = 0.002
ROUNDS = 1
# One-at-a-time grids around each family's defaults (the study's validation-chosen values).
# `transitions_last` is not searched alone: its query (the last tie window, decay 0.3) is what it is for (a blend that
# reacts to one click); a standalone NDCG search would turn it back into `transitions`. Its matrix is transitions'.
# `tie_ms` is not searched: it says which events are unordered (one second: a page of ratings submitted at once), and
# with ties in the split's order a per-row profile would learn that order (item id) instead of behaviour.
GRIDS: dict[str, dict[str, list]] = {
    "item_knn": {
        "last": [5, 10, 20],
        "decay": [0.6, 0.75, 0.9],
        "neighbours": [50, 100, 200],
        "shrink": [0.0, 10.0, 50.0],
    },
    "transitions": {
        "window": [3, 5, 8],
        "step_decay": [0.4, 0.6, 0.8],
        "backward": [0.0, 0.5, 1.0],
        "last": [5, 10, 20],
        "decay": [0.5, 0.7, 0.85],
        "neighbours": [100, 500, 2000],
    },
    "ease": {
        "neighbours": [200, 500, 2000],
        "lam": [300.0, 1000.0, 3000.0],
        "last": [10, 15, 25],
        "decay": [0.7, 0.8, 0.9],
    },
    "slit": {
        "neighbours": [200, 500, 2000],
        "lam": [300.0, 1000.0, 3000.0],
        "decay": [0.9, 0.93, 0.96],
        "horizon": [1, 2, 3],
    },
    "session_knn": {"neighbours": [10, 20, 50], "last": [5, 10, 20], "decay": [0.7, 0.8, 0.9]},
    "content": {"last": [10, 20, 40], "decay": [0.8, 0.9, 0.95]},
}


def validation_split() -> tuple[EvalSplit, object]:
    """(validation split of the train part, the train part's dataset for the hybrid); the test part is dropped."""
    s = get_settings()
    events = load_ml100k_events()
    train_events, _ = time_split(events, TEST_SHARE)  # the test split is never used below
    types, items = list(s.event_weights), attributes()
    val = make_split(train_events, test_share=TEST_SHARE, event_types=types, items=items)
    train_part = make_split(events, test_share=TEST_SHARE, event_types=types, items=items).train
    return val, train_part


def score(name: str, params: dict, val: EvalSplit) -> float:
    model = registry.create(name, get_settings(), params)
    model.fit(val.train)
    return float(evaluate(model, val)["ndcg@10"])


def search(name: str, val: EvalSplit, log=print) -> dict:
    """One parameter at a time over its grid, the others held; returns the chosen values and their NDCG@10."""
    model = registry.create(name, get_settings())
    current = {k: getattr(model.params, k) for k in GRIDS[name]}
    best = score(name, current, val)
    log(f"{name}: defaults {current} -> {best:.4f}")
    for _ in range(ROUNDS):
        for key, values in GRIDS[name].items():
            for value in values:
                if value == current[key]:
                    continue
                trial = {**current, key: value}
                started = time.perf_counter()
                ndcg = score(name, trial, val)
                log(f"  {key}={value}: {ndcg:.4f} ({time.perf_counter() - started:.1f}s)")
                if ndcg > best + MIN_GAIN:
                    best, current = ndcg, trial
    log(f"{name}: chosen {current} -> validation NDCG@10 {best:.4f}")
    return {"params": current, "ndcg@10": best}


def hybrid(train_part, log=print) -> dict:
    """The hybrid's own in-fit tuning on the train part (its holdout is the validation split above)."""
    model = cast("Hybrid", registry.create("hybrid", get_settings()))
    started = time.perf_counter()
    model.fit(train_part)
    out = {
        "weights": model.weights,
        "reranker_kept": model.reranker is not None,
        "validation": model.validation,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if model.reranker is not None:
        out["reranker_l2"] = model.reranker.l2
    log(f"hybrid: {json.dumps(out, default=float)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated families (default: all in GRIDS)")
    parser.add_argument("--no-hybrid", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(GRIDS)
    val, train_part = validation_split()
    chosen = {name: search(name, val) for name in names if name in GRIDS}
    if not args.no_hybrid:
        chosen["hybrid"] = hybrid(train_part)
    print(json.dumps(chosen, indent=1, default=float))


if __name__ == "__main__":
    main()
